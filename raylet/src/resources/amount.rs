//! Fixed-point resource amounts.

use std::fmt;

/// A non-negative resource amount, stored as a whole number of units of 1/10_000.
///
/// Fixed point rather than `f64` because a node takes and returns the same amounts millions
/// of times: with floats, ten grants of 0.1 CPU taken from 1.0 and returned leave
/// 0.9999999999999999 available, and a later request for 1 CPU waits forever. Integer units
/// add and subtract exactly, so accounting never drifts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

impl Amount {
    /// Units in one whole resource (one CPU, one GPU, one byte of memory).
    pub const UNITS_PER_WHOLE: u64 = 10_000;
    /// Decimal places an amount may have (10^4 = [`Self::UNITS_PER_WHOLE`]).
    pub const DECIMAL_PLACES: u32 = 4;
    /// Nothing.
    pub const ZERO: Amount = Amount(0);
    /// One whole resource.
    pub const ONE: Amount = Amount(Self::UNITS_PER_WHOLE);
    /// The largest amount that can be represented (about 1.8e15 whole resources).
    pub const MAX: Amount = Amount(u64::MAX);

    /// An amount of `units` ten-thousandths.
    pub const fn from_units(units: u64) -> Self {
        Amount(units)
    }

    /// This amount in ten-thousandths.
    pub const fn units(self) -> u64 {
        self.0
    }

    /// Exactly `count` whole resources (e.g. bytes of memory, which need not pass through
    /// `f64` and so stay exact however large).
    pub fn whole(count: u64) -> Result<Self, AmountProblem> {
        count
            .checked_mul(Self::UNITS_PER_WHOLE)
            .map(Amount)
            .ok_or(AmountProblem::TooLarge)
    }

    /// Converts a user-given number, rejecting what cannot be an amount: NaN and infinities,
    /// negative numbers, more than four decimal places, and numbers beyond [`Self::MAX`].
    ///
    /// The decimal-places check allows for `f64` not representing most decimals exactly
    /// (0.1 is really 0.1000000000000000055…): a value counts as having four decimal places
    /// when it is within a few ulps of a multiple of 0.0001.
    pub fn from_f64(value: f64) -> Result<Self, AmountProblem> {
        if !value.is_finite() {
            return Err(AmountProblem::NotFinite);
        }
        if value < 0.0 {
            return Err(AmountProblem::Negative);
        }
        let scaled = value * Self::UNITS_PER_WHOLE as f64;
        // `u64::MAX as f64` rounds up to 2^64, which is itself out of range, hence `>=`.
        if scaled >= u64::MAX as f64 {
            return Err(AmountProblem::TooLarge);
        }
        let rounded = scaled.round();
        // Error from representing the decimal in binary and from the multiplication is at
        // most about one ulp of `scaled`; four ulps of slack keeps honest inputs like
        // 123456789.1234 while a real fifth decimal (off by >= 0.1 unit) is still caught.
        let tolerance = (scaled * 4.0 * f64::EPSILON).max(1e-6);
        if (scaled - rounded).abs() > tolerance {
            return Err(AmountProblem::TooPrecise);
        }
        // In range and non-negative (checked above), so the cast neither wraps nor saturates.
        Ok(Amount(rounded as u64))
    }

    /// This amount as a float, for display and the wire. Exact for every amount whose whole
    /// part is below 2^53 / 10^4 (about 9e11), and for whole amounts below 2^53.
    pub fn to_f64(self) -> f64 {
        let whole = self.0 / Self::UNITS_PER_WHOLE;
        let fraction = self.0 % Self::UNITS_PER_WHOLE;
        whole as f64 + fraction as f64 / Self::UNITS_PER_WHOLE as f64
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Whether this is a whole number of resources (0, 1, 2, …).
    pub const fn is_whole(self) -> bool {
        self.0.is_multiple_of(Self::UNITS_PER_WHOLE)
    }

    /// The whole part (2 for 2.5).
    pub const fn whole_part(self) -> u64 {
        self.0 / Self::UNITS_PER_WHOLE
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// `self - other`, or `None` if `other` is larger.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self + other`, stopping at [`Self::MAX`].
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// `self - other`, stopping at zero.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }
}

/// Shortest exact decimal: `1`, `0.5`, `0.0001`, `1073741824`.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.whole_part();
        let fraction = self.0 % Self::UNITS_PER_WHOLE;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:04}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Why a number cannot be a resource amount; each message says what to give instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountProblem {
    /// NaN or an infinity.
    #[error("it is not a finite number; give a number such as 1 or 0.5")]
    NotFinite,
    /// Below zero.
    #[error("it is negative; give 0 or more")]
    Negative,
    /// Has a fifth (or later) decimal place.
    #[error("it has more than 4 decimal places; round it to a multiple of 0.0001")]
    TooPrecise,
    /// Beyond [`Amount::MAX`].
    #[error("it is larger than the largest supported amount, 1844674407370955.1615")]
    TooLarge,
}
