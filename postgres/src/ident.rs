//! SQL identifiers: quoting, and `schema.table` names.

use std::fmt;

use thiserror::Error;

/// Quotes an SQL identifier (`a"b` becomes `"a""b"`).
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a `schema.table` pair.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

/// Whether `ident` needs no quoting: lower-case ASCII letters, digits and
/// `_`, not starting with a digit (the names the bridge creates itself).
pub fn is_plain(ident: &str) -> bool {
    !ident.is_empty()
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !ident.starts_with(|c: char| c.is_ascii_digit())
}

/// A table name that is not of the form `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("table {0:?} is not of the form schema.table")]
pub struct TableNameError(pub String);

/// A `schema.table` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// Parses `schema.table`, or `table` in `public`.
    pub fn parse(text: &str) -> Result<TableName, TableNameError> {
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", text),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(TableNameError(text.to_owned()));
        }
        Ok(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The name quoted for SQL.
    pub fn quoted(&self) -> String {
        quote_table(&self.schema, &self.table)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_inside_an_identifier_is_doubled() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_table("s", "T"), "\"s\".\"T\"");
    }

    #[test]
    fn a_table_name_without_schema_is_in_public() {
        let name = TableName::parse("users").unwrap();
        assert_eq!(name.to_string(), "public.users");
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse(".b").is_err());
    }

    #[test]
    fn plain_identifiers_are_lower_case_and_do_not_start_with_a_digit() {
        assert!(is_plain("sync_bridge_1"));
        assert!(!is_plain("Sync"));
        assert!(!is_plain("1abc"));
        assert!(!is_plain(""));
    }
}
