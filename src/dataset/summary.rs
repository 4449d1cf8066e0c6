//! A dataset's summary, as `t2v info` prints it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::options::Format;
use super::skip::Skipped;

/// How many skipped files [`Summary`]'s `Display` names one by one before it only counts.
const SHOWN_SKIPS: usize = 20;

/// One class and its number of items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    /// The class's name.
    pub name: String,
    /// How many items carry its label.
    pub count: usize,
}

/// What a dataset holds: its classes with their counts, its size, and what was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The path the dataset was opened from.
    pub root: PathBuf,
    /// Its layout.
    pub format: Format,
    /// Every class in label order, with its count.
    pub classes: Vec<ClassCount>,
    /// Total number of items.
    pub total: usize,
    /// Everything skipped while listing (empty classes included), with reasons.
    pub skipped: Vec<Skipped>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset  {} ({})", self.root.display(), self.format)?;
        writeln!(
            f,
            "items    {} in {} classes",
            self.total,
            self.classes.len()
        )?;
        let width = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for (i, c) in self.classes.iter().enumerate() {
            writeln!(f, "  {i:>4}  {:<width$}  {}", c.name, c.count)?;
        }
        if self.skipped.is_empty() {
            return writeln!(f, "skipped  none");
        }
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.skipped {
            *by_kind.entry(s.reason.kind()).or_default() += 1;
        }
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(f, "skipped  {} ({})", self.skipped.len(), kinds.join(", "))?;
        for s in self.skipped.iter().take(SHOWN_SKIPS) {
            writeln!(f, "  {s}")?;
        }
        if self.skipped.len() > SHOWN_SKIPS {
            writeln!(f, "  ... and {} more", self.skipped.len() - SHOWN_SKIPS)?;
        }
        Ok(())
    }
}
