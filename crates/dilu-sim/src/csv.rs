//! A small RFC 4180 CSV reader (quoted fields, doubled quotes, CRLF) with line numbers, enough for the trace
//! files the simulators read. Kept here so `dilu-sim` needs no CSV dependency.

/// One data record: its 1-based line number in the file and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    /// Line number where the record starts (1-based; the header is line 1).
    pub line: usize,
    /// The fields, unquoted.
    pub fields: Vec<String>,
}

/// A malformed CSV file: an unterminated quoted field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: unterminated quoted field")]
pub struct CsvSyntaxError {
    /// Line where the quoted field starts.
    pub line: usize,
}

/// Splits CSV text into records, skipping blank lines.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, CsvSyntaxError> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut quote_line = 0;
    let mut any = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_quotes = true;
                quote_line = line;
                any = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                any = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if any || !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                    records.push(CsvRecord {
                        line: record_line,
                        fields: std::mem::take(&mut fields),
                    });
                }
                any = false;
                line += 1;
                record_line = line;
            }
            _ => {
                field.push(c);
                any = true;
            }
        }
    }
    if in_quotes {
        return Err(CsvSyntaxError { line: quote_line });
    }
    if any || !field.is_empty() {
        fields.push(field);
        records.push(CsvRecord {
            line: record_line,
            fields,
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_and_blank_lines() {
        let recs = parse_csv("a,b\n\n\"x,1\",\"say \"\"hi\"\"\"\r\n3,\n").unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].line, 3);
        assert_eq!(recs[1].fields, vec!["x,1", "say \"hi\""]);
        assert_eq!(recs[2].fields, vec!["3", ""]);
    }

    #[test]
    fn unterminated_quote_names_its_line() {
        assert_eq!(
            parse_csv("a\n\"oops\n").unwrap_err(),
            CsvSyntaxError { line: 2 }
        );
    }
}
