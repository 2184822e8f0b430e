"""Alerts: subscriptions, the durable outbox, digests and their delivery.

- ``subscriptions``: who wants to hear about which job, and how;
- ``engine``: the durable consumer that turns matching events into outbox
  rows, in the same state-database transaction as its replay cursor;
- ``outbox``: claiming, finishing and retrying rows;
- ``digest``: one message (subject, text, HTML) for a group of alerts;
- ``channels``: SMTP (aiosmtplib) and Apprise delivery;
- ``dispatcher``: grouping per recipient and channel, then delivery;
- ``mailcatcher``: the demo's embedded SMTP server;
- ``routes``: the JSON API and the socket event.
"""
