//! A paper's headline claims and what `cargo xtask eval` made of them.
//!
//! Each reproduction lists the claims of its paper as [`Claim`]s: the statement, the
//! paper's value, a stated [`Tolerance`], and what this run measured (or what is missing
//! to measure it and the command that would). The [`Verdict`] is never stored: it is
//! computed from the measured value and the tolerance every time it is asked for, so a
//! report cannot say "reproduced" for a value outside its tolerance.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::Table;

/// How close a measured value must be to count as reproducing the claim. Values are in
/// the claim's unit (e.g. percent change, points of accuracy, MB); bounds are inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tolerance {
    /// `|measured - target| <= within`.
    Absolute {
        /// The paper's value.
        target: f64,
        /// Largest allowed difference, in the claim's unit.
        within: f64,
    },
    /// `|measured - target| <= within * |target|`.
    Relative {
        /// The paper's value.
        target: f64,
        /// Largest allowed difference as a fraction of the target (0.02 = 2%).
        within: f64,
    },
    /// `measured >= bound`.
    AtLeast {
        /// Smallest value that reproduces the claim.
        bound: f64,
    },
    /// `measured <= bound`.
    AtMost {
        /// Largest value that reproduces the claim.
        bound: f64,
    },
    /// `low <= measured <= high`.
    Range {
        /// Smallest value that reproduces the claim.
        low: f64,
        /// Largest value that reproduces the claim.
        high: f64,
    },
}

impl Tolerance {
    /// Whether `measured` reproduces the claim (never for NaN).
    pub fn accepts(&self, measured: f64) -> bool {
        if !measured.is_finite() {
            return false;
        }
        match *self {
            Tolerance::Absolute { target, within } => (measured - target).abs() <= within,
            Tolerance::Relative { target, within } => {
                (measured - target).abs() <= within * target.abs()
            }
            Tolerance::AtLeast { bound } => measured >= bound,
            Tolerance::AtMost { bound } => measured <= bound,
            Tolerance::Range { low, high } => low <= measured && measured <= high,
        }
    }

    /// The tolerance in words, `unit` appended to values (e.g. "%", " points", " MB").
    pub fn describe(&self, unit: &str) -> String {
        let v = |x: f64| format!("{}{unit}", num(x));
        match *self {
            Tolerance::Absolute { target, within } => {
                if within == 0.0 {
                    format!("exactly {}", v(target))
                } else {
                    format!("{} ± {}", v(target), num(within))
                }
            }
            Tolerance::Relative { target, within } => {
                format!("{} ± {}%", v(target), num(100.0 * within))
            }
            Tolerance::AtLeast { bound } => format!(">= {}", v(bound)),
            Tolerance::AtMost { bound } => format!("<= {}", v(bound)),
            Tolerance::Range { low, high } => format!("{} to {}", v(low), v(high)),
        }
    }

    /// Why `measured` misses the tolerance (only meaningful when it does).
    fn miss(&self, measured: f64, unit: &str) -> String {
        let v = |x: f64| format!("{}{unit}", num(x));
        if !measured.is_finite() {
            return format!("the measurement is {measured}");
        }
        match *self {
            Tolerance::Absolute { target, within } => format!(
                "{} is {} from {} (allowed {})",
                v(measured),
                num((measured - target).abs()),
                v(target),
                num(within)
            ),
            Tolerance::Relative { target, within } => format!(
                "{} is {}% from {} (allowed {}%)",
                v(measured),
                num(100.0 * (measured - target).abs() / target.abs()),
                v(target),
                num(100.0 * within)
            ),
            Tolerance::AtLeast { bound } => format!("{} is below {}", v(measured), v(bound)),
            Tolerance::AtMost { bound } => format!("{} is above {}", v(measured), v(bound)),
            Tolerance::Range { low, high } => {
                format!("{} is outside {} to {}", v(measured), v(low), v(high))
            }
        }
    }
}

/// What a run knows about a claim's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measurement {
    /// Measured in this run.
    Measured {
        /// The value compared against the tolerance, in the claim's unit.
        value: f64,
        /// How the value is shown (with its context, e.g. "-45.5% (7.94 -> 4.33 MB)").
        shown: String,
    },
    /// Not measured in this run.
    NotRun {
        /// What is missing: data, weights, a GPU, the full (non-quick) run.
        missing: String,
        /// The command that would measure it.
        command: String,
    },
}

impl Measurement {
    /// A measured value, shown as `shown`.
    pub fn value(value: f64, shown: impl Into<String>) -> Self {
        Measurement::Measured {
            value,
            shown: shown.into(),
        }
    }

    /// Not measured: `missing` is what it needs, `command` what would run it.
    pub fn missing(missing: impl Into<String>, command: impl Into<String>) -> Self {
        Measurement::NotRun {
            missing: missing.into(),
            command: command.into(),
        }
    }
}

/// The verdict on one claim, computed by [`Claim::verdict`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The measured value is within the tolerance.
    Reproduced,
    /// The measured value is outside the tolerance.
    NotReproduced {
        /// The measured value against the tolerance.
        reason: String,
    },
    /// Nothing was measured in this run.
    NotRunHere {
        /// What is missing.
        missing: String,
        /// The command that would measure it.
        command: String,
    },
    /// The paper's number cannot be obtained by construction.
    NotReproducible {
        /// Why.
        why: String,
    },
}

impl Verdict {
    /// The verdict's label: "reproduced", "NOT reproduced", "not run here", "not reproducible".
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced { .. } => "NOT reproduced",
            Verdict::NotRunHere { .. } => "not run here",
            Verdict::NotReproducible { .. } => "not reproducible",
        }
    }
}

/// One headline claim of a paper, with what this run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ClaimRecord", from = "ClaimRecord")]
pub struct Claim {
    /// The claim, as the paper makes it (with the setting it is measured in).
    pub statement: String,
    /// The paper's value, as the paper states it.
    pub paper: String,
    /// Unit of the measured value and the tolerance ("%", " points", " MB", "").
    pub unit: String,
    /// The stated tolerance.
    pub tolerance: Tolerance,
    /// What this run measured.
    pub measurement: Measurement,
    /// Set only when the paper's number cannot be obtained by construction: why.
    pub not_reproducible: Option<String>,
    /// Context: how it was measured, why it may differ.
    pub note: String,
}

impl Claim {
    /// A claim with its paper value, unit, tolerance and measurement.
    pub fn new(
        statement: impl Into<String>,
        paper: impl Into<String>,
        unit: impl Into<String>,
        tolerance: Tolerance,
        measurement: Measurement,
    ) -> Self {
        Self {
            statement: statement.into(),
            paper: paper.into(),
            unit: unit.into(),
            tolerance,
            measurement,
            not_reproducible: None,
            note: String::new(),
        }
    }

    /// Adds context (appended to any note already there).
    pub fn note(mut self, note: impl AsRef<str>) -> Self {
        if !self.note.is_empty() {
            self.note.push(' ');
        }
        self.note.push_str(note.as_ref());
        self
    }

    /// Marks the paper's number as unobtainable by construction, with why. Use only where
    /// the paper contradicts itself or the official code.
    pub fn not_reproducible(mut self, why: impl Into<String>) -> Self {
        self.not_reproducible = Some(why.into());
        self
    }

    /// The verdict, computed from the measurement and the tolerance.
    pub fn verdict(&self) -> Verdict {
        if let Some(why) = &self.not_reproducible {
            return Verdict::NotReproducible { why: why.clone() };
        }
        match &self.measurement {
            Measurement::NotRun { missing, command } => Verdict::NotRunHere {
                missing: missing.clone(),
                command: command.clone(),
            },
            Measurement::Measured { value, .. } if self.tolerance.accepts(*value) => {
                Verdict::Reproduced
            }
            Measurement::Measured { value, .. } => Verdict::NotReproduced {
                reason: self.tolerance.miss(*value, &self.unit),
            },
        }
    }

    /// The measured value as shown, or "-".
    pub fn shown(&self) -> &str {
        match &self.measurement {
            Measurement::Measured { shown, .. } => shown,
            Measurement::NotRun { .. } => "-",
        }
    }

    /// The note column: the verdict's reason (or what is missing and the command), then
    /// the claim's note.
    pub fn detail(&self) -> String {
        let mut out = match self.verdict() {
            Verdict::Reproduced => String::new(),
            Verdict::NotReproduced { reason } => format!("{reason}."),
            Verdict::NotRunHere { missing, command } => {
                format!("Needs {missing}: `{command}`.")
            }
            Verdict::NotReproducible { why } => format!("{why}."),
        };
        if !self.note.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&self.note);
        }
        out
    }
}

/// The serialized form of a [`Claim`]: its fields plus the verdict, which is written for
/// readers of the JSON and recomputed (never trusted) when read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimRecord {
    statement: String,
    paper: String,
    #[serde(default)]
    unit: String,
    tolerance: Tolerance,
    #[serde(default)]
    tolerance_text: String,
    measurement: Measurement,
    #[serde(default)]
    not_reproducible: Option<String>,
    #[serde(default)]
    note: String,
    #[serde(default)]
    verdict: Option<Verdict>,
}

impl From<Claim> for ClaimRecord {
    fn from(c: Claim) -> Self {
        let verdict = Some(c.verdict());
        let tolerance_text = c.tolerance.describe(&c.unit);
        Self {
            statement: c.statement,
            paper: c.paper,
            unit: c.unit,
            tolerance: c.tolerance,
            tolerance_text,
            measurement: c.measurement,
            not_reproducible: c.not_reproducible,
            note: c.note,
            verdict,
        }
    }
}

impl From<ClaimRecord> for Claim {
    fn from(r: ClaimRecord) -> Self {
        Self {
            statement: r.statement,
            paper: r.paper,
            unit: r.unit,
            tolerance: r.tolerance,
            measurement: r.measurement,
            not_reproducible: r.not_reproducible,
            note: r.note,
        }
    }
}

/// How many claims got each verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    /// Within tolerance.
    pub reproduced: usize,
    /// Measured, outside tolerance.
    pub not_reproduced: usize,
    /// Not measured in this run.
    pub not_run_here: usize,
    /// Unobtainable by construction.
    pub not_reproducible: usize,
}

impl VerdictCounts {
    /// Counts the verdicts of `claims`.
    pub fn of(claims: &[Claim]) -> Self {
        let mut counts = Self::default();
        for claim in claims {
            match claim.verdict() {
                Verdict::Reproduced => counts.reproduced += 1,
                Verdict::NotReproduced { .. } => counts.not_reproduced += 1,
                Verdict::NotRunHere { .. } => counts.not_run_here += 1,
                Verdict::NotReproducible { .. } => counts.not_reproducible += 1,
            }
        }
        counts
    }

    /// Number of claims counted.
    pub fn total(&self) -> usize {
        self.reproduced + self.not_reproduced + self.not_run_here + self.not_reproducible
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Self) {
        self.reproduced += other.reproduced;
        self.not_reproduced += other.not_reproduced;
        self.not_run_here += other.not_run_here;
        self.not_reproducible += other.not_reproducible;
    }

    /// "3 reproduced, 1 not reproduced, 2 not run here" (zero counts left out).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (n, what) in [
            (self.reproduced, "reproduced"),
            (self.not_reproduced, "not reproduced"),
            (self.not_run_here, "not run here"),
            (self.not_reproducible, "not reproducible"),
        ] {
            if n > 0 {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                write!(out, "{n} {what}").unwrap();
            }
        }
        if out.is_empty() {
            out.push_str("no claims");
        }
        out
    }
}

/// The claims as a table: claim | paper | measured | tolerance | verdict | note.
pub fn claims_table(title: impl Into<String>, claims: &[Claim]) -> Table {
    let mut table = Table::new(
        title,
        &["claim", "paper", "measured", "tolerance", "verdict", "note"],
    );
    for claim in claims {
        table.row([
            claim.statement.clone(),
            claim.paper.clone(),
            claim.shown().to_string(),
            claim.tolerance.describe(&claim.unit),
            claim.verdict().label().to_string(),
            claim.detail(),
        ]);
    }
    table.note(format!(
        "{}. Verdicts are computed from the measured value and the tolerance; \"not run here\" \
         names what is missing and the command that would measure it.",
        VerdictCounts::of(claims).summary()
    ));
    table
}

/// `x` with four significant digits, trailing zeros trimmed ("46.3", "0.0049", "27846892").
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 8) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".into() } else { s }
}

/// Signed percent change from `before` to `after` (e.g. -45.5 for a 45.5% reduction).
pub fn change_percent(before: f64, after: f64) -> f64 {
    100.0 * (after - before) / before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(tolerance: Tolerance, value: Option<f64>) -> Claim {
        let measurement = match value {
            Some(v) => Measurement::value(v, num(v)),
            None => Measurement::missing("the data", "cargo xtask fetch data"),
        };
        Claim::new("a claim", "1", "", tolerance, measurement)
    }

    fn reproduced(tolerance: Tolerance, value: f64) -> bool {
        claim(tolerance, Some(value)).verdict() == Verdict::Reproduced
    }

    #[test]
    fn absolute_tolerance_is_inclusive_at_the_boundary() {
        let t = Tolerance::Absolute {
            target: -46.25,
            within: 1.5,
        };
        assert!(reproduced(t, -46.25));
        assert!(reproduced(t, -44.75));
        assert!(reproduced(t, -47.75));
        assert!(!reproduced(t, -44.74));
        assert!(!reproduced(t, -47.76));
        let exact = Tolerance::Absolute {
            target: 18.0,
            within: 0.0,
        };
        assert!(reproduced(exact, 18.0));
        assert!(!reproduced(exact, 17.0));
        assert_eq!(exact.describe(""), "exactly 18");
    }

    #[test]
    fn relative_tolerance_scales_with_the_target() {
        let t = Tolerance::Relative {
            target: 200.0,
            within: 0.02,
        };
        assert!(reproduced(t, 204.0));
        assert!(reproduced(t, 196.0));
        assert!(!reproduced(t, 204.5));
        assert!(!reproduced(t, 195.5));
        // A negative target: the allowed band is still symmetric.
        let t = Tolerance::Relative {
            target: -50.0,
            within: 0.1,
        };
        assert!(reproduced(t, -45.0));
        assert!(reproduced(t, -55.0));
        assert!(!reproduced(t, -44.0));
    }

    #[test]
    fn bounds_and_ranges_are_inclusive() {
        let at_least = Tolerance::AtLeast { bound: 1.0 };
        assert!(reproduced(at_least, 1.0));
        assert!(!reproduced(at_least, 0.999));
        let at_most = Tolerance::AtMost { bound: -40.0 };
        assert!(reproduced(at_most, -40.0));
        assert!(reproduced(at_most, -67.0));
        assert!(!reproduced(at_most, -39.9));
        let range = Tolerance::Range {
            low: 0.94,
            high: 0.95,
        };
        assert!(reproduced(range, 0.94));
        assert!(reproduced(range, 0.95));
        assert!(reproduced(range, 0.946));
        assert!(!reproduced(range, 0.9399));
        assert!(!reproduced(range, 0.9501));
    }

    #[test]
    fn nan_is_never_reproduced() {
        for t in [
            Tolerance::AtLeast { bound: 0.0 },
            Tolerance::AtMost { bound: 0.0 },
            Tolerance::Absolute {
                target: 0.0,
                within: 1e9,
            },
        ] {
            assert!(!reproduced(t, f64::NAN));
        }
    }

    #[test]
    fn a_value_outside_tolerance_flips_the_verdict() {
        let t = Tolerance::Absolute {
            target: -36.0,
            within: 4.0,
        };
        let mut c = claim(t, Some(-32.2));
        assert_eq!(c.verdict(), Verdict::Reproduced);
        c.measurement = Measurement::value(-20.0, "-20%");
        match c.verdict() {
            Verdict::NotReproduced { reason } => {
                assert!(reason.contains("-20"), "{reason}");
                assert!(reason.contains("-36"), "{reason}");
            }
            other => panic!("expected NotReproduced, got {other:?}"),
        }
    }

    #[test]
    fn no_measurement_is_not_run_here_with_the_command() {
        let c = claim(Tolerance::AtLeast { bound: 1.0 }, None);
        assert_eq!(
            c.verdict(),
            Verdict::NotRunHere {
                missing: "the data".into(),
                command: "cargo xtask fetch data".into()
            }
        );
        assert!(c.detail().contains("`cargo xtask fetch data`"));
        assert_eq!(c.shown(), "-");
    }

    #[test]
    fn not_reproducible_wins_over_a_measurement() {
        let c = claim(Tolerance::AtLeast { bound: 0.0 }, Some(1.0))
            .not_reproducible("the paper contradicts itself");
        assert_eq!(
            c.verdict(),
            Verdict::NotReproducible {
                why: "the paper contradicts itself".into()
            }
        );
        assert_eq!(c.shown(), "1");
    }

    #[test]
    fn json_round_trip_recomputes_the_verdict() {
        let c = claim(
            Tolerance::Range {
                low: 40.0,
                high: 60.0,
            },
            Some(48.0),
        )
        .note("a note");
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"verdict\":\"reproduced\""), "{json}");
        let back: Claim = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // A stale or forged verdict in the file is ignored: the value decides.
        let forged = json
            .replace("\"value\":48.0", "\"value\":70.0")
            .replace("\"value\":48", "\"value\":70");
        let back: Claim = serde_json::from_str(&forged).unwrap();
        assert!(matches!(back.verdict(), Verdict::NotReproduced { .. }));
    }

    #[test]
    fn counts_add_up() {
        let claims = vec![
            claim(Tolerance::AtLeast { bound: 0.0 }, Some(1.0)),
            claim(Tolerance::AtLeast { bound: 0.0 }, Some(2.0)),
            claim(Tolerance::AtLeast { bound: 0.0 }, Some(-1.0)),
            claim(Tolerance::AtLeast { bound: 0.0 }, None),
            claim(Tolerance::AtLeast { bound: 0.0 }, Some(1.0)).not_reproducible("why"),
        ];
        let counts = VerdictCounts::of(&claims);
        assert_eq!(
            counts,
            VerdictCounts {
                reproduced: 2,
                not_reproduced: 1,
                not_run_here: 1,
                not_reproducible: 1
            }
        );
        assert_eq!(counts.total(), 5);
        assert_eq!(
            counts.summary(),
            "2 reproduced, 1 not reproduced, 1 not run here, 1 not reproducible"
        );
        let table = claims_table("claims", &claims);
        assert_eq!(table.rows.len(), 5);
        assert_eq!(table.rows[2][4], "NOT reproduced");
        assert_eq!(table.rows[3][4], "not run here");
    }

    #[test]
    fn numbers_print_with_four_significant_digits() {
        assert_eq!(num(46.3), "46.3");
        assert_eq!(num(-45.4832), "-45.48");
        assert_eq!(num(0.0049), "0.0049");
        assert_eq!(num(27846892.0), "27846892");
        assert_eq!(num(0.005), "0.005");
        assert_eq!(num(2.0812), "2.081");
        assert_eq!(change_percent(4.0, 3.0), -25.0);
    }
}
