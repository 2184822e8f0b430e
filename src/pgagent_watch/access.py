"""Who is asking, and what they may see and do: the one place the rules live.

The API, the page and the socket all ask a Principal; none of them decides
on its own. Until users exist, everyone is an anonymous administrator, so
that a fresh install (and the demo before sign-in exists) just works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user (or the anonymous administrator of a fresh install).

    ``servers`` is the set of server ids granted; None means every server.
    """

    user_id: int | None
    name: str
    role: Role
    servers: frozenset[int] | None = None
    email: str | None = None

    def can_see(self, server_id: int) -> bool:
        return (
            self.role == Role.ADMIN or self.servers is None or server_id in self.servers
        )

    def can_operate(self, server_id: int) -> bool:
        return _RANK[self.role] >= _RANK[Role.OPERATOR] and self.can_see(server_id)

    @property
    def is_admin(self) -> bool:
        """Users, servers, channels, every subscription and the audit trail."""
        return self.role == Role.ADMIN

    def owns_or_admin(self, owner_id: int | None) -> bool:
        """Whether this user may change a thing (a token, a subscription) of
        the user ``owner_id``: their own, or anyone's for an administrator."""
        return self.is_admin or (self.user_id is not None and owner_id == self.user_id)

    def visible(self, server_ids: Iterable[int]) -> list[int]:
        return [s for s in server_ids if self.can_see(s)]


ANONYMOUS = Principal(user_id=None, name="anonymous", role=Role.ADMIN)
