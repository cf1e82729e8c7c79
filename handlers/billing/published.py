"""What billing offers the other contexts (payments, provisioning's hooks) and its own
background work: the ledger's functions and types, re-exported. The contract is in
docs/billing.md; every function writes in the caller's transaction and never commits."""

from __future__ import annotations

from handlers.billing.ledger import (
    CURRENCY,
    PLATFORM_ACCOUNTS,
    Balance,
    InsufficientFunds,
    LedgerError,
    TransferView,
    account_id,
    balance,
    check_invariants,
    expire_pending,
    get_transfer,
    lock_accounts,
    platform_account,
    post_pending,
    set_credit_limit,
    transfer,
    void_pending,
    wallet,
    wallet_balance,
)

__all__ = [
    "CURRENCY",
    "PLATFORM_ACCOUNTS",
    "Balance",
    "InsufficientFunds",
    "LedgerError",
    "TransferView",
    "account_id",
    "balance",
    "check_invariants",
    "expire_pending",
    "get_transfer",
    "lock_accounts",
    "platform_account",
    "post_pending",
    "set_credit_limit",
    "transfer",
    "void_pending",
    "wallet",
    "wallet_balance",
]
