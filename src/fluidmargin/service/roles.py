"""The API's roles and the groups of them the endpoints admit, defined once (README.md's "Roles" table).

``admin`` (everything; creates keys), ``venue`` (the venue's matching engine and custody: opens accounts,
posts fills, reports deposits and withdrawals, reads any account, never prices), ``account`` (its own
accounts and their sub-accounts only), ``publisher`` (only publishes prices, under its key's source name).
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["admin", "venue", "account", "publisher"]
ROLES: tuple[str, ...] = get_args(Role)
ADMIN, VENUE, ACCOUNT, PUBLISHER = ROLES

SEE_ALL = (ADMIN, VENUE)  # see and act on every account
OWNERS = (ADMIN, VENUE, ACCOUNT)  # act on an account: its holder (in the key's scope) or the venue
PUBLISHERS = (ADMIN, PUBLISHER)  # publish prices and vols
LIQUIDITY_PROVIDERS = (ADMIN, ACCOUNT)  # bid in auctions, use the backstop vault
