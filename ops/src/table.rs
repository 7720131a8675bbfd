//! Plain-text tables for human output: left-aligned columns separated by two spaces.

#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: ToString>(header: impl IntoIterator<Item = S>) -> Self {
        Self { rows: vec![header.into_iter().map(|s| s.to_string()).collect()] }
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        let row: Vec<String> = cells.into_iter().map(|s| s.to_string()).collect();
        assert_eq!(row.len(), self.rows[0].len(), "a row has as many cells as the header");
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let cols = self.rows[0].len();
        let widths: Vec<usize> =
            (0..cols).map(|c| self.rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == cols {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in the largest binary unit that keeps the number at least 1, e.g. `16.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_space() {
        let mut t = Table::new(["NAME", "UP"]);
        t.row(["eu-central-1", "up"]);
        t.row(["a", ""]);
        assert_eq!(t.render(), "NAME          UP\neu-central-1  up\na\n");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
