//! What every `check` command reports: one line per finding, with the fix when something is wrong.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub level: Level,
    /// What was checked: a setting, a table, a rule.
    pub item: String,
    pub detail: String,
    /// The SQL, setting or edit that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(level: Level, item: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Self {
        Finding { level, item: item.into(), detail: detail.into(), fix }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        write!(f, "{level}  {:<40} {}", self.item, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// Prints the findings; an error counting the failures when there are any.
pub fn report(findings: &[Finding]) -> Result<(), String> {
    for finding in findings {
        println!("{finding}");
    }
    match findings.iter().filter(|f| f.level == Level::Fail).count() {
        0 => Ok(()),
        failed => Err(format!("{failed} check(s) failed")),
    }
}
