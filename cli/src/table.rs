//! The terminal tables of `demo` and `status`: a header, rows of cells,
//! every column as wide as its widest cell, the first left-aligned and the
//! rest right-aligned (numbers).

use std::fmt::Write;

pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for cells in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                let _ = match i {
                    0 => write!(line, "{c:<w$}"),
                    _ => write!(line, "  {c:>w$}"),
                };
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["peer", "conns"]);
        t.row(vec!["a-long-name".into(), "3/3".into()]);
        t.row(vec!["b".into(), "12/12".into()]);
        assert_eq!(
            t.render(),
            "peer         conns\na-long-name    3/3\nb            12/12\n"
        );
    }
}
