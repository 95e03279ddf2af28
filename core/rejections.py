"""Reason codes of ``usage.dead-letter`` records (CONTRACT 3.1 and 5.4): one per way an input
can fail, the same words in records, command results and metric labels."""

from __future__ import annotations


class RejectCode:
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    INVALID_SCHEMA = "invalid_schema"
    UNKNOWN_METRIC = "unknown_metric"
    ZERO_QUANTITY = "zero_quantity"
    QUANTITY_OUT_OF_RANGE = "quantity_out_of_range"
    MISSING_CONVERSATION = "missing_conversation_id"
    INVALID_FIN_QUANTITY = "invalid_fin_quantity"
    NEGATIVE_SEATS = "negative_seats"
    BATCH_TOO_LARGE = "batch_too_large"
    EMPTY_BATCH = "empty_batch"
    OCCURRED_IN_FUTURE = "occurred_in_future"
    PERIOD_CLOSED = "period_closed"
    # An input a stage failed on in a way validation did not foresee (a bug; the log has it).
    INTERNAL_ERROR = "internal_error"
    # A mail still failing for now at METERWATCH_MAIL_GIVE_UP_AFTER.
    MAIL_GIVEN_UP = "mail_given_up"
    # A mail request held back: its workspace's mails this hour would pass
    # METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR.
    MAIL_RATE_LIMITED = "mail_rate_limited"
    # A webhook endpoint answered 4xx (other than 408, 425, 429): never tried again.
    WEBHOOK_REFUSED = "webhook_refused"
    # A webhook delivery still failing for now at METERWATCH_WEBHOOK_GIVE_UP_AFTER.
    WEBHOOK_GIVEN_UP = "webhook_given_up"
    # A billing_contacts command setting more than METERWATCH_MAX_BILLING_CONTACTS addresses.
    TOO_MANY_CONTACTS = "too_many_contacts"
