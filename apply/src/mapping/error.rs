//! Errors of loading and checking a mapping.

use std::fmt;

/// A problem at one place of a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file as it was named to the loader (e.g. `schemas/mapping/reference.toml`).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the mapping, e.g. `entity "team" field 2 (lookup)`; may be empty.
    pub context: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.context.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.context, self.message
            )
        }
    }
}

/// Why a mapping could not be loaded, or does not match a database.
///
/// Displayed as `FILE:LINE: CONTEXT: MESSAGE`, one problem per line, e.g.
/// `schemas/mapping/reference.toml:80: entity "team" field 2: unknown kind "lookpu" ...`.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A problem at a place in a file.
    #[error("{0}")]
    At(Located),
    /// A problem of the mapping as a whole (a missing section, no files).
    #[error("{place}: {message}")]
    General { place: String, message: String },
    /// Several problems, each displayed on its own line.
    #[error("{}", join_lines(.0))]
    Several(Vec<MappingError>),
}

fn join_lines(errors: &[MappingError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl MappingError {
    /// One error for a list of problems; `Ok` when the list is empty.
    pub(crate) fn from_list(mut errors: Vec<MappingError>) -> Result<(), MappingError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(MappingError::Several(errors)),
        }
    }

    /// The individual problems (a [`MappingError::Several`] flattened).
    pub fn problems(&self) -> Vec<&MappingError> {
        match self {
            MappingError::Several(list) => list.iter().flat_map(|e| e.problems()).collect(),
            other => vec![other],
        }
    }
}

/// A mapping file's text, for turning byte offsets into lines.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a str,
    text: &'a str,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Source { file, text }
    }

    /// 1-based line and column of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    pub(crate) fn error(
        &self,
        offset: usize,
        context: impl Into<String>,
        message: impl Into<String>,
    ) -> MappingError {
        let (line, column) = self.line_col(offset);
        MappingError::At(Located {
            file: self.file.to_owned(),
            line,
            column,
            context: context.into(),
            message: message.into(),
        })
    }
}

/// An error at a known line (after loading, when only lines are kept).
pub(crate) fn at_line(
    file: &str,
    line: usize,
    context: impl Into<String>,
    message: impl Into<String>,
) -> MappingError {
    MappingError::At(Located {
        file: file.to_owned(),
        line,
        column: 1,
        context: context.into(),
        message: message.into(),
    })
}
