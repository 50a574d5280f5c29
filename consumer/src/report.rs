//! The preflight report: every check's outcome, and for failures the exact fix. A leaf
//! module: the error type refers to it, and it refers to nothing of the crate.

use std::fmt;

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; the detail says what was found.
    Pass(String),
    /// Works, but something deserves attention.
    Warn {
        /// What was found.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Streaming cannot work until this is fixed.
    Fail {
        /// What was found.
        problem: String,
        /// Exactly what to change.
        fix: String,
    },
    /// Not checked, because an earlier failure makes the check meaningless.
    Skipped(String),
}

/// One check of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The check's name (see the module docs).
    pub name: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
}

/// The outcome of every check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreflightReport {
    /// The checks, in the order run.
    pub checks: Vec<Check>,
    /// The tables the patterns match now, as (schema, table).
    pub tables: Vec<(String, String)>,
}

impl PreflightReport {
    /// Whether no check failed.
    pub fn is_ok(&self) -> bool {
        !self.checks.iter().any(|c| matches!(c.outcome, Outcome::Fail { .. }))
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub(crate) fn push(&mut self, name: &'static str, outcome: Outcome) {
        self.checks.push(Check { name, outcome });
    }
}

impl fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.outcome {
                Outcome::Pass(detail) => writeln!(f, "  ok    {:<24} {detail}", c.name)?,
                Outcome::Warn { problem, fix } => {
                    writeln!(f, "  warn  {:<24} {problem}\n        {:<24} fix: {fix}", c.name, "")?
                }
                Outcome::Fail { problem, fix } => {
                    writeln!(f, "  FAIL  {:<24} {problem}\n        {:<24} fix: {fix}", c.name, "")?
                }
                Outcome::Skipped(why) => writeln!(f, "  skip  {:<24} {why}", c.name)?,
            }
        }
        Ok(())
    }
}

pub(crate) fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail { problem: problem.into(), fix: fix.into() }
}
