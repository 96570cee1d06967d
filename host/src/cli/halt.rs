//! `poolhost run --halt`: when a run stops after failures, and how, as GNU parallel's `--halt`
//! (`now,fail=N` or `soon,fail=N`, N a count or a percentage of the tasks).

/// When `--halt` stops a run: how, and after how many failures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Halt {
    pub when: When,
    fail: Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Kill the running tasks too.
    Now,
    /// Let the running tasks finish; start no more.
    Soon,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Threshold {
    Count(usize),
    Percent(f64),
}

impl Halt {
    /// How many failures of `total` tasks halt the run (at least one).
    pub fn failures(&self, total: usize) -> usize {
        match self.fail {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => ((p / 100.0 * total as f64).ceil() as usize).max(1),
        }
    }

    pub fn message(&self, failed: usize) -> String {
        let what = match self.when {
            When::Now => "terminating the running tasks and cancelling the rest",
            When::Soon => "letting the running tasks finish and cancelling the rest",
        };
        format!(
            "halting after {failed} failed task{} (--halt {self}): {what}",
            if failed == 1 { "" } else { "s" },
        )
    }
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = match self.when {
            When::Now => "now",
            When::Soon => "soon",
        };
        match self.fail {
            Threshold::Count(n) => write!(f, "{when},fail={n}"),
            Threshold::Percent(p) => write!(f, "{when},fail={p}%"),
        }
    }
}

/// Parses `now,fail=N` or `soon,fail=N`, N a count or a percentage, as GNU parallel's `--halt`.
pub fn parse_halt(text: &str) -> Result<Halt, String> {
    const EXPECTED: &str = "expected now,fail=N or soon,fail=N (N a count or a percentage, e.g. 10%)";
    let (when, condition) = text.split_once(',').ok_or(EXPECTED)?;
    let when = match when {
        "now" => When::Now,
        "soon" => When::Soon,
        _ => return Err(EXPECTED.into()),
    };
    let value = condition.strip_prefix("fail=").ok_or(EXPECTED)?;
    let fail = match value.strip_suffix('%') {
        Some(percent) => match percent.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Threshold::Percent(p),
            _ => return Err(format!("`{value}`: a percentage is above 0 and at most 100")),
        },
        None => match value.parse::<usize>() {
            Ok(n) if n > 0 => Threshold::Count(n),
            _ => {
                return Err(format!(
                    "`{value}`: a count of failures is a whole number above 0"
                ));
            }
        },
    };
    Ok(Halt { when, fail })
}
