//! Plain-text tables for the operator commands: every column as wide as its widest
//! cell, so a long workflow id or epic pushes its column out instead of shoving the
//! rest of the row out of line. The last column is not padded.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

pub struct Table {
    indent: &'static str,
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            indent: "",
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Every line starts with `indent` (a table inside a section of `workflow show`).
    pub fn indented(mut self, indent: &'static str) -> Table {
        self.indent = indent;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header and the rows, each line ending in a newline.
    pub fn render(&self) -> String {
        let n = self.columns.len();
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::from(self.indent);
            for (i, ((_, align), w)) in self.columns.iter().zip(&widths).enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = w.saturating_sub(width(cell));
                if i + 1 == n {
                    if *align == Align::Right {
                        line.push_str(&" ".repeat(pad));
                    }
                    line.push_str(cell);
                } else {
                    match align {
                        Align::Left => {
                            let _ = write!(line, "{cell}{} ", " ".repeat(pad));
                        }
                        Align::Right => {
                            let _ = write!(line, "{}{cell} ", " ".repeat(pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Characters, not bytes: an epic title in another script lines up too.
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_widen_to_their_longest_cell_and_stay_aligned() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("ROUND", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["wf-1".into(), "1".into(), "short".into()]);
        t.row(vec![
            "wf-a-very-long-workflow-id-indeed".into(),
            "12".into(),
            "x".into(),
        ]);
        let long = "wf-a-very-long-workflow-id-indeed";
        let pad = |s: &str| format!("{s:<width$}", width = long.len());
        assert_eq!(
            t.render(),
            format!(
                "{} ROUND NOTE\n{}     1 short\n{long}    12 x\n",
                pad("ID"),
                pad("wf-1")
            )
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Left)]).indented("  ");
        assert_eq!(t.render(), "  A B\n");
    }
}
