//! SQL text helpers: identifier and literal quoting.

/// Quotes an identifier like PostgreSQL's `quote_ident`, always.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal; backslashes force the `E''` form so the text
/// is the same whatever `standard_conforming_strings` says.
pub fn literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_break_out() {
        assert_eq!(
            ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\'"), r"E'a\\'''");
    }
}
