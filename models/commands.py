"""``usage.control`` (CONTRACT 3.2): commands discriminated by ``type``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..core.alerts import CONTRACT_LEVEL_CHOICES, CONTRACT_LEVELS
from ..core.periods import BillingCycle
from .common import MAX_AMOUNT, Identifier, Metric, Timestamp, valid_address


def _deliverable(address: str) -> str:
    # The same check the mail sink makes, so an accepted contact can always be mailed.
    if not valid_address(address):
        raise ValueError(f"not a deliverable email address: {address!r:.80}")
    return address


EmailAddress = Annotated[str, AfterValidator(_deliverable)]


# Prices have more room than any real price needs.
MAX_UNIT_PRICE = Decimal(1_000_000)
MAX_PRICE_DECIMALS = 12


class Actor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Identifier
    billing_permission: StrictBool


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    command_id: Identifier
    issued_at: Timestamp


class ContractCommand(_Command):
    """A command about a contract: keyed by ``contract_id`` and applied by the contract's owner."""

    contract_id: Identifier


class _WorkspaceCommand(_Command):
    workspace_id: Identifier
    actor: Actor


class AlertSettings(_WorkspaceCommand):
    type: Literal["alert_settings"]
    metric: Metric
    threshold: StrictInt = Field(gt=0, le=MAX_AMOUNT)
    early_warnings: StrictBool = False
    enabled: StrictBool = True
    forecast_warnings: StrictBool = False


class LimitSettings(_WorkspaceCommand):
    type: Literal["limit_settings"]
    metric: Metric
    limit: StrictInt = Field(ge=0, le=MAX_AMOUNT)
    enabled: StrictBool = True


# A cost threshold: a decimal string above 0, at most this much and with at most 12 decimals.
MAX_COST_AMOUNT = Decimal(10) ** 15


def _amount_text(value: object) -> object:
    # Money travels as text: a JSON number would reach some producers as a binary float first.
    if not isinstance(value, str):
        raise PydanticCustomError("decimal_string", "amount must be a decimal number written as a string")
    return value


class CostAlertSettings(_WorkspaceCommand):
    """A threshold on the estimated cost of ``metric``, or of all metrics together ("total"),
    in the contract's currency (CONTRACT 3.2, *Addition: cost alerts*)."""

    type: Literal["cost_alert_settings"]
    metric: Metric | Literal["total"]
    amount: Annotated[
        Decimal,
        BeforeValidator(_amount_text),
        Field(gt=0, le=MAX_COST_AMOUNT, allow_inf_nan=False),
        AfterValidator(_at_most_price_decimals),
    ]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    enabled: StrictBool = True


class BillingContacts(_WorkspaceCommand):
    type: Literal["billing_contacts"]
    emails: list[EmailAddress] = Field(max_length=100)


def _at_most_price_decimals(value: Decimal) -> Decimal:
    # pydantic's own decimal_places check lets a far negative exponent (1E-3000000) through.
    # (normalize() would underflow it to 0 in the default context, so trailing zeros are
    # counted by hand.)
    _, digits, exponent = value.as_tuple()
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if isinstance(exponent, int) and any(digits) and exponent + trailing_zeros < -MAX_PRICE_DECIMALS:
        raise PydanticCustomError(
            "decimal_max_places", f"Decimal input should have no more than {MAX_PRICE_DECIMALS} decimal places"
        )
    return value


class PriceTerm(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # Bounded so that a price like 1E+3000000 cannot make every cost figure megabytes long.
    unit_price: Annotated[
        Decimal,
        Field(ge=0, le=MAX_UNIT_PRICE, decimal_places=MAX_PRICE_DECIMALS, allow_inf_nan=False),
        AfterValidator(_at_most_price_decimals),
    ]
    included: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)


class Subscription(ContractCommand):
    type: Literal["subscription"]
    workspace_ids: list[Identifier] = Field(min_length=1, max_length=10_000)
    billing_anchor: date
    timezone: str
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    prices: dict[Metric, PriceTerm] = Field(default_factory=dict)
    messages_included: StrictInt | None = Field(default=None, ge=0, le=MAX_AMOUNT)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        BillingCycle(1, value)  # the same check the billing cycle makes; raises ValueError
        return value


class ContractAlertSettings(ContractCommand):
    type: Literal["contract_alert_settings"]
    actor: Actor
    metric: Metric
    levels: list[StrictInt] = Field(default_factory=lambda: list(CONTRACT_LEVELS), min_length=1, max_length=10)
    enabled: StrictBool = True

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, levels: list[int]) -> list[int]:
        """The levels as a set, lowest first; each one of 50, 80 and 100."""
        if not set(levels) <= set(CONTRACT_LEVEL_CHOICES):
            raise ValueError(f"levels must be chosen from {', '.join(map(str, CONTRACT_LEVEL_CHOICES))}")
        return sorted(set(levels))


Command = Annotated[
    AlertSettings | LimitSettings | BillingContacts | Subscription | ContractAlertSettings | CostAlertSettings,
    Field(discriminator="type"),
]
_command_adapter: TypeAdapter[Command] = TypeAdapter(Command)


class CommandRejected(ValueError):
    def __init__(self, reason: str, command_id: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id


def parse_command(raw: bytes | None) -> Command:
    """Decode one control message; CommandRejected carries a reason fit for ``command-results``."""
    try:
        document = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as error:
        raise CommandRejected(f"invalid_json: {error.msg}", None) from None
    command_id = document.get("command_id") if isinstance(document, dict) else None
    if not isinstance(command_id, str):
        command_id = None
    try:
        command = _command_adapter.validate_python(document)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        raise CommandRejected(f"invalid_command: {where}: {first['msg']}", command_id) from None
    if isinstance(command, _WorkspaceCommand | ContractAlertSettings) and not command.actor.billing_permission:
        raise CommandRejected("no_billing_permission: the actor lacks billing permission", command.command_id)
    if (
        isinstance(command, AlertSettings | ContractAlertSettings | CostAlertSettings)
        and command.metric is Metric.SEATS
    ):
        raise CommandRejected(
            "alerts_not_available_on_seats: usage alerts are not available on seats", command.command_id
        )
    if isinstance(command, LimitSettings) and command.metric is Metric.SEATS:
        raise CommandRejected(
            "limits_not_available_on_seats: hard limits are not available on seats", command.command_id
        )
    return command
