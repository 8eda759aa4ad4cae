//! A CSV reader that checks the header against a schema and turns every field problem into
//! a [`RowError`] with file, line, column and field name.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use suanli_engine::GpuModel;

use super::{ImportError, Location, RowError};

/// One column a file may carry.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
}

impl Field {
    pub const fn required(name: &'static str) -> Field {
        Field {
            name,
            required: true,
        }
    }

    pub const fn optional(name: &'static str) -> Field {
        Field {
            name,
            required: false,
        }
    }
}

fn schema_names(schema: &[Field]) -> String {
    schema.iter().map(|f| f.name).collect::<Vec<_>>().join(",")
}

/// Reads a headed CSV file row by row.
#[derive(Debug)]
pub struct RowReader<R: Read> {
    file: PathBuf,
    reader: csv::Reader<R>,
    /// For each header position, its index in the schema.
    columns: Vec<usize>,
    /// For each schema field, its header position when present.
    positions: Vec<Option<usize>>,
    schema: &'static [Field],
    record: csv::StringRecord,
}

impl RowReader<File> {
    pub fn open(path: &Path, schema: &'static [Field]) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(|source| ImportError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        RowReader::from_reader(path, file, schema)
    }
}

impl<R: Read> RowReader<R> {
    pub fn from_reader(
        path: &Path,
        input: R,
        schema: &'static [Field],
    ) -> Result<Self, ImportError> {
        let file = path.to_path_buf();
        // Flexible: column counts are checked here so the message can say what was expected.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let mut header = csv::StringRecord::new();
        let got = reader
            .read_record(&mut header)
            .map_err(|e| header_error(&file, e))?;
        if !got || (header.len() == 1 && header[0].trim().is_empty()) {
            return Err(ImportError::Empty {
                file,
                expected: schema_names(schema),
            });
        }
        let mut columns = Vec::with_capacity(header.len());
        let mut positions = vec![None; schema.len()];
        for (pos, raw) in header.iter().enumerate() {
            let name = raw.trim().trim_start_matches('\u{feff}');
            let Some(index) = schema.iter().position(|f| f.name == name) else {
                return Err(ImportError::Header {
                    file,
                    reason: format!(
                        "unknown column {name:?} at column {}; known columns: {}",
                        pos + 1,
                        schema_names(schema)
                    ),
                });
            };
            if positions[index].is_some() {
                return Err(ImportError::Header {
                    file,
                    reason: format!("column {name:?} appears twice (column {})", pos + 1),
                });
            }
            positions[index] = Some(pos);
            columns.push(index);
        }
        if let Some(missing) = schema
            .iter()
            .zip(&positions)
            .find(|(f, p)| f.required && p.is_none())
        {
            return Err(ImportError::Header {
                file,
                reason: format!(
                    "missing required column {:?}; expected: {}",
                    missing.0.name,
                    schema_names(schema)
                ),
            });
        }
        Ok(RowReader {
            file,
            reader,
            columns,
            positions,
            schema,
            record: csv::StringRecord::new(),
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The next data row; `Ok(None)` at the end. A row-level error (wrong field count,
    /// invalid UTF-8) is `Ok(Some(Err(..)))` so that callers may skip it.
    #[allow(clippy::type_complexity)]
    pub fn next_row(&mut self) -> Result<Option<Result<Row<'_>, RowError>>, ImportError> {
        loop {
            match self.reader.read_record(&mut self.record) {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(err) => {
                    let line = err.position().map_or(0, |p| p.line());
                    if let csv::ErrorKind::Io(_) = err.kind() {
                        let reason = err.to_string();
                        return Err(ImportError::Io {
                            file: self.file.clone(),
                            source: std::io::Error::other(reason),
                        });
                    }
                    return Ok(Some(Err(RowError {
                        location: Location {
                            file: self.file.clone(),
                            line,
                            column: None,
                            field: None,
                        },
                        reason: csv_reason(&err),
                    })));
                }
            }
            let line = self.record.position().map_or(0, |p| p.line());
            // A blank line reads as one empty field: not a row.
            if self.record.len() == 1 && self.record[0].trim().is_empty() {
                continue;
            }
            if self.record.len() != self.columns.len() {
                return Ok(Some(Err(RowError {
                    location: Location {
                        file: self.file.clone(),
                        line,
                        column: None,
                        field: None,
                    },
                    reason: format!(
                        "expected {} fields as in the header, found {}",
                        self.columns.len(),
                        self.record.len()
                    ),
                })));
            }
            return Ok(Some(Ok(Row {
                file: &self.file,
                line,
                record: &self.record,
                positions: &self.positions,
                schema: self.schema,
            })));
        }
    }
}

fn csv_reason(err: &csv::Error) -> String {
    match err.kind() {
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
        _ => err.to_string(),
    }
}

fn header_error(file: &Path, err: csv::Error) -> ImportError {
    match err.kind() {
        csv::ErrorKind::Io(_) => ImportError::Io {
            file: file.to_path_buf(),
            source: std::io::Error::other(err.to_string()),
        },
        _ => ImportError::Header {
            file: file.to_path_buf(),
            reason: csv_reason(&err),
        },
    }
}

/// One data row, with typed accessors by column name.
#[derive(Debug)]
pub struct Row<'a> {
    file: &'a Path,
    line: u64,
    record: &'a csv::StringRecord,
    positions: &'a [Option<usize>],
    schema: &'static [Field],
}

impl<'a> Row<'a> {
    pub fn line(&self) -> u64 {
        self.line
    }

    fn position_of(&self, name: &str) -> Option<usize> {
        let index = self.schema.iter().position(|f| f.name == name)?;
        self.positions[index]
    }

    /// An error at a named column.
    pub fn error(&self, name: &str, reason: impl Into<String>) -> RowError {
        RowError {
            location: Location {
                file: self.file.to_path_buf(),
                line: self.line,
                column: self.position_of(name).map(|p| p + 1),
                field: Some(name.to_string()),
            },
            reason: reason.into(),
        }
    }

    /// The trimmed text of a column; `None` when the file has no such column.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let pos = self.position_of(name)?;
        self.record.get(pos).map(str::trim)
    }

    pub fn text(&self, name: &str) -> Result<&'a str, RowError> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.error(name, "empty value")),
        }
    }

    /// A non-negative integer. Integral decimals such as `1000.0` are accepted because
    /// spreadsheet and pandas exports write them.
    pub fn count(&self, name: &str) -> Result<u64, RowError> {
        let text = self.text(name)?;
        parse_count(text).map_err(|reason| self.error(name, reason))
    }

    /// Like [`Row::count`], but an empty value or a missing column is `None`.
    pub fn opt_count(&self, name: &str) -> Result<Option<u64>, RowError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(text) => parse_count(text)
                .map(Some)
                .map_err(|reason| self.error(name, reason)),
        }
    }

    /// A finite, non-negative number.
    pub fn non_negative(&self, name: &str) -> Result<f64, RowError> {
        let text = self.text(name)?;
        match f64::from_str(text) {
            Ok(v) if !v.is_finite() => {
                Err(self.error(name, format!("not a finite number: {text:?}")))
            }
            Ok(v) if v < 0.0 => {
                Err(self.error(name, format!("negative number {text}, expected >= 0")))
            }
            Ok(v) => Ok(v),
            Err(_) => Err(self.error(name, format!("not a number: {text:?}"))),
        }
    }

    /// A `|`-separated list of GPU models; empty means any.
    pub fn models(&self, name: &str) -> Result<Vec<GpuModel>, RowError> {
        let Some(text) = self.get(name) else {
            return Ok(Vec::new());
        };
        let mut models = Vec::new();
        for part in text.split('|').map(str::trim).filter(|p| !p.is_empty()) {
            let model = GpuModel::from_str(part)
                .map_err(|p| self.error(name, format!("bad GPU model {part:?}: {p}")))?;
            if !models.contains(&model) {
                models.push(model);
            }
        }
        Ok(models)
    }
}

fn parse_count(text: &str) -> Result<u64, String> {
    if let Ok(v) = text.parse::<u64>() {
        return Ok(v);
    }
    match f64::from_str(text) {
        Ok(v) if v < 0.0 => Err(format!(
            "negative number {text}, expected a non-negative integer"
        )),
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v <= 9.0e15 => Ok(v as u64),
        Ok(_) => Err(format!("not a whole number: {text:?}")),
        Err(_) => Err(format!("not a number: {text:?}")),
    }
}
