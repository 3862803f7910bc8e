"""Dutch-auction maths after MakerDAO's Liquidations 2.0 (dss ``abaci.sol`` and ``clip.sol``).

Pure, exact integer functions: ray fixed point (``RAY = 10**27``) with dss's rounding, the three
price curves of ``abaci.sol`` (price as a function of the seconds since the auction started), and
the Clipper's start price, reset test (``status``) and keeper incentive.

Conventions and deviations from dss, on purpose:

* ``cut`` follows the *current* dss convention: it is the per-step (or per-second) multiplicative
  factor, a ray ``<= RAY`` (a 1 % drop per step is ``cut = 0.99 * RAY``). The older
  ``StairstepExponentialDecrease`` took the decrease itself and computed ``rpow(RAY - cut, ...)``;
  that form is *not* used here.
* Every uint256 overflow that would make the Solidity code revert raises :class:`ValidationError`
  here (Python ints never wrap), as do negative inputs and divisions by zero; otherwise results are
  bit-for-bit the Solidity ones.
* The keeper incentive is in the engine's units: ``chip`` is a ratio in ppm (dss: wad) and ``tip``
  and ``tab`` are quote quantums (dss: rad). Both round down, as ``wmul`` does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fluidmargin.core.errors import ValidationError
from fluidmargin.core.units import PPM, PRICE_DECIMALS, Rounding, div_round, pow10

RAY_DECIMALS = 27
RAY: int = pow10(RAY_DECIMALS)
UINT256_MAX = 2**256 - 1
_PRICE_Q_TO_RAY = pow10(RAY_DECIMALS - PRICE_DECIMALS)


def _uint(name: str, value: int) -> int:
    """``value`` if it is a uint256, else a ValidationError (dss would not accept it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= UINT256_MAX:
        raise ValidationError(f"{name}={value} is not a uint256")
    return value


def _mul(x: int, y: int) -> int:
    """dss ``mul``: the product, or a ValidationError where uint256 would overflow."""
    z = x * y
    if z > UINT256_MAX:
        raise ValidationError(f"uint256 overflow in {x} * {y}")
    return z


# --- ray fixed point -------------------------------------------------------------------------------


def rmul(x: int, y: int) -> int:
    """dss ``rmul``: ``x * y / RAY``, rounded down."""
    return _mul(_uint("x", x), _uint("y", y)) // RAY


def rdiv(x: int, y: int) -> int:
    """dss ``rdiv``: ``x * RAY / y``, rounded down; ``y == 0`` is an error (Solidity reverts)."""
    if _uint("y", y) == 0:
        raise ValidationError("rdiv by zero")
    return _mul(_uint("x", x), RAY) // y


def rpow(x: int, n: int, b: int = RAY) -> int:
    """dss ``rpow`` (PR #78 assembly): ``x**n / b**(n-1)`` by squaring, each product rounded half up.

    A port of the assembly line by line, overflow checks included, so prices match the chain's.
    For ``0 <= x <= b`` every intermediate stays ``<= b`` and the result differs from the exact
    ``x**n / b**(n-1)`` by at most ``(n - 1) / 2`` (each squaring at most doubles the error carried
    in, each rounding adds at most 1/2, and multiplying by values ``<= 1`` never grows it).
    """
    _uint("x", x)
    _uint("n", n)
    _uint("b", b)
    if n == 0:
        return b
    if x == 0:
        return 0
    z = x if n % 2 else b
    half = b // 2  # for rounding
    n //= 2
    while n:
        xx = x * x
        if x >> 128:
            raise ValidationError("rpow overflow: x >= 2**128")
        xx_round = xx + half
        if xx_round > UINT256_MAX:
            raise ValidationError("rpow overflow in x * x + half")
        x = xx_round // b
        if n % 2:
            zx = z * x
            if zx > UINT256_MAX:
                raise ValidationError("rpow overflow in z * x")
            zx_round = zx + half
            if zx_round > UINT256_MAX:
                raise ValidationError("rpow overflow in z * x + half")
            z = zx_round // b
        n //= 2
    return z


def ray_from_price_q(price_q: int) -> int:
    """A price in price quantums (1e-8 quote per base unit) as a ray; exact."""
    return _uint("price_q", price_q) * _PRICE_Q_TO_RAY


def price_q_from_ray(price_ray: int, rounding: Rounding) -> int:
    """A ray price back in price quantums, rounded in the named direction (the caller decides who wins)."""
    return div_round(_uint("price_ray", price_ray), _PRICE_Q_TO_RAY, rounding)


# --- price curves (abaci.sol) -----------------------------------------------------------------------


def linear_decrease(top: int, tau: int, dur: int) -> int:
    """``LinearDecrease.price``: ``top * (tau - dur) / tau``, reaching 0 at ``dur >= tau`` seconds.

    The time factor is rounded down to a ray first, then ``rmul`` rounds down again, as in dss.
    """
    _uint("top", top)
    _uint("tau", tau)
    if _uint("dur", dur) >= tau:
        return 0
    return rmul(top, _mul(tau - dur, RAY) // tau)


def stairstep_exponential_decrease(top: int, cut: int, step: int, dur: int) -> int:
    """``StairstepExponentialDecrease.price``: ``top * cut**(dur // step)``, one drop every ``step`` s.

    ``cut`` is the per-step multiplicative factor (ray, ``<= RAY``), the current dss convention.
    """
    _check_cut(cut)
    if _uint("step", step) == 0:
        raise ValidationError("step must be positive (dss divides by it)")
    return rmul(top, rpow(cut, _uint("dur", dur) // step, RAY))


def exponential_decrease(top: int, cut: int, dur: int) -> int:
    """``ExponentialDecrease.price``: ``top * cut**dur``, ``cut`` the per-second factor (ray, ``<= RAY``)."""
    _check_cut(cut)
    return rmul(top, rpow(cut, _uint("dur", dur), RAY))


def _check_cut(cut: int) -> None:
    """dss ``file("cut")`` rejects a factor above one (the price would rise)."""
    if _uint("cut", cut) > RAY:
        raise ValidationError(f"cut={cut} > RAY: the price would increase")


# --- Clipper parameters and helpers (clip.sol) ------------------------------------------------------


class Curve(enum.Enum):
    """Which ``abaci.sol`` price curve an auction follows."""

    LINEAR = "linear"
    STAIRSTEP_EXPONENTIAL = "stairstep_exponential"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True)
class AuctionParams:
    """A market's Dutch-auction settings (dss Clipper ``file`` values plus its ``calc``).

    ``buf_ray``: start-price multiplier on the oracle price; ``tail_s``: longest run before a
    reset; ``cusp_ray``: lowest ``price / top`` before a reset; ``chip_ppm`` and ``tip_quote_q``:
    keeper incentive (share of the tab plus a flat amount). ``tau_s`` is for the linear curve,
    ``cut_ray`` for both exponential curves, ``step_s`` for the stairstep one.
    """

    buf_ray: int
    tail_s: int
    cusp_ray: int
    chip_ppm: int
    tip_quote_q: int
    curve: Curve
    tau_s: int = 0
    cut_ray: int = RAY
    step_s: int = 1

    def __post_init__(self) -> None:
        for name in ("buf_ray", "tail_s", "cusp_ray", "chip_ppm", "tip_quote_q", "tau_s", "cut_ray", "step_s"):
            _uint(name, getattr(self, name))
        if self.buf_ray == 0:
            raise ValidationError("buf_ray must be positive (the start price would be 0)")
        if self.cusp_ray > RAY:
            raise ValidationError("cusp_ray above RAY would reset every auction at once")
        _check_cut(self.cut_ray)
        if self.curve is Curve.LINEAR and self.tau_s == 0:
            raise ValidationError("a linear curve needs tau_s > 0")
        if self.curve is Curve.STAIRSTEP_EXPONENTIAL and self.step_s == 0:
            raise ValidationError("a stairstep curve needs step_s > 0")


def curve_price(params: AuctionParams, top: int, dur: int) -> int:
    """The auction price (ray) ``dur`` seconds after the start, on the curve ``params`` names."""
    if params.curve is Curve.LINEAR:
        return linear_decrease(top, params.tau_s, dur)
    if params.curve is Curve.STAIRSTEP_EXPONENTIAL:
        return stairstep_exponential_decrease(top, params.cut_ray, params.step_s, dur)
    return exponential_decrease(top, params.cut_ray, dur)


def start_price(oracle_price: int, buf: int) -> int:
    """Clipper ``kick``/``redo``: ``top = rmul(oracle_price, buf)`` (rays); a zero top is rejected."""
    top = rmul(oracle_price, buf)
    if top == 0:
        raise ValidationError("zero start price (Clipper/zero-top-price)")
    return top


def needs_reset(top: int, price: int, started_s: int, now_s: int, tail: int, cusp: int) -> bool:
    """Clipper ``status``: ``now - tic > tail or rdiv(price, top) < cusp``.

    Strict comparisons, as in dss: an auction exactly ``tail`` seconds old, or exactly at the
    ``cusp`` ratio, is still live. ``now_s < started_s`` is an error (dss's ``sub`` reverts).
    """
    if _uint("now_s", now_s) < _uint("started_s", started_s):
        raise ValidationError(f"now_s={now_s} is before the auction start {started_s}")
    return now_s - started_s > _uint("tail", tail) or rdiv(price, top) < _uint("cusp", cusp)


def auction_status(params: AuctionParams, top: int, started_s: int, now_s: int) -> tuple[bool, int]:
    """Clipper ``status`` in full: ``(done, price)`` for an auction started at ``started_s``."""
    if _uint("now_s", now_s) < _uint("started_s", started_s):
        raise ValidationError(f"now_s={now_s} is before the auction start {started_s}")
    price = curve_price(params, top, now_s - started_s)
    return needs_reset(top, price, started_s, now_s, params.tail_s, params.cusp_ray), price


def keeper_incentive(tab_quote_q: int, chip_ppm: int, tip_quote_q: int) -> int:
    """Clipper ``coin = tip + wmul(tab, chip)`` in quote quantums; the share rounds down (a payout)."""
    _uint("tab_quote_q", tab_quote_q)
    _uint("chip_ppm", chip_ppm)
    _uint("tip_quote_q", tip_quote_q)
    return tip_quote_q + div_round(tab_quote_q * chip_ppm, PPM, Rounding.FLOOR)
