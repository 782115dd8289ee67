//! Mapping between byte offsets in a TOML file and the keys written there, so that an
//! error can name both the line and the key.

use toml_edit::{Document, Item, TableLike};

use crate::load::display_key;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
}

impl Located {
    /// The line and column of a byte offset in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            line,
            column: before.len() - line_start + 1,
        }
    }
}

/// The dotted key whose key or value covers `offset`, if the text parses as TOML.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = Document::parse(text).ok()?;
    let mut path = Vec::new();
    if find_offset(doc.as_table(), offset, &mut path) {
        Some(display_key(&path))
    } else {
        None
    }
}

fn find_offset(table: &dyn TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, item) in table.iter() {
        let Some(key_repr) = table.key(key) else {
            continue;
        };
        path.push(key.to_owned());
        if key_repr.span().is_some_and(|s| s.contains(&offset)) {
            return true;
        }
        let nested: Option<&dyn TableLike> = match item {
            Item::Table(t) => Some(t),
            Item::Value(toml_edit::Value::InlineTable(t)) => Some(t),
            _ => None,
        };
        if let Some(nested) = nested
            && find_offset(nested, offset, path)
        {
            return true;
        }
        if item.span().is_some_and(|s| s.contains(&offset)) {
            return true;
        }
        if let Item::ArrayOfTables(tables) = item {
            for t in tables.iter() {
                if find_offset(t, offset, path) {
                    return true;
                }
            }
        }
        path.pop();
    }
    false
}

/// Where `key` (segments) is written in `text`, if it is.
pub fn locate_key(text: &str, key: &[String]) -> Option<Located> {
    let doc = Document::parse(text).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    for (i, segment) in key.iter().enumerate() {
        let (key_repr, item) = table.get_key_value(segment)?;
        let span = key_repr.span().or_else(|| item.span());
        let nested: Option<&dyn TableLike> = match item {
            Item::Table(t) => Some(t),
            Item::Value(toml_edit::Value::InlineTable(t)) => Some(t),
            _ => None,
        };
        match nested {
            Some(next) if i + 1 < key.len() => table = next,
            _ => return span.map(|s| Located::of_offset(text, s.start)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "log_level = \"info\"\n\n[runtimes.runc]\npath = \"/usr/sbin/runc\"\n\n[registry.mirrors.\"docker.io\"]\nendpoints = [\"http://127.0.0.1:5000\"]\n";

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(
            Located::of_offset("a\nbc\n", 3),
            Located { line: 2, column: 2 }
        );
        assert_eq!(Located::of_offset("abc", 0), Located { line: 1, column: 1 });
    }

    #[test]
    fn key_at_finds_nested_keys() {
        let offset = TEXT.find("/usr/sbin").expect("fixture holds the path");
        assert_eq!(key_at(TEXT, offset).as_deref(), Some("runtimes.runc.path"));
        let offset = TEXT.find("http://").expect("fixture holds the url");
        assert_eq!(
            key_at(TEXT, offset).as_deref(),
            Some("registry.mirrors.\"docker.io\".endpoints")
        );
    }

    #[test]
    fn locate_key_finds_the_line() {
        let at = locate_key(
            TEXT,
            &[
                "registry".into(),
                "mirrors".into(),
                "docker.io".into(),
                "endpoints".into(),
            ],
        );
        assert_eq!(at.map(|a| a.line), Some(7));
        assert_eq!(locate_key(TEXT, &["missing".into()]), None);
    }
}
