//! Readers for the Alibaba "openb" GPU-cluster trace (FGD, ATC'23): the node list and the pod lists, turned
//! into [`NodeSpec`]s and pod requests with FGD's conversion rules (`docs/algorithms.md` §10).

use crate::csv::parse_csv;
use dilu_core::{InstanceKind, InstanceRequest, NodeSpec, SM_MILLI};
use std::collections::HashMap;
use std::path::Path;

/// Kubernetes' default pod limit per node, which the FGD simulator keeps.
pub const OPENB_MAX_PODS: u32 = 1001;

/// A problem in an openb CSV file, naming the file, line, field, value and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenbError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Io {
        /// Path.
        file: String,
        /// OS error.
        reason: String,
    },
    /// A required column is missing from the header.
    #[error("{file}:1: missing column '{column}' (header has: {header})")]
    MissingColumn {
        /// Path.
        file: String,
        /// The column.
        column: &'static str,
        /// The header as read.
        header: String,
    },
    /// A field breaks a rule.
    #[error("{file}:{line}: field '{field}' = {value:?}: {rule}")]
    Field {
        /// Path.
        file: String,
        /// 1-based line.
        line: usize,
        /// Column name.
        field: String,
        /// Value as written.
        value: String,
        /// The rule broken.
        rule: String,
    },
    /// A row has fewer fields than the header, or the CSV syntax is broken.
    #[error("{file}:{line}: {rule}")]
    Row {
        /// Path.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        rule: String,
    },
}

/// One pod of a pod list: its name and what it requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Pod name (unique in a file).
    pub name: String,
    /// 1-based line in the file.
    pub line: usize,
    /// The request (kind [`InstanceKind::Pod`]).
    pub request: InstanceRequest,
}

/// Column lookup and typed field access over one CSV file.
struct Table {
    file: String,
    columns: HashMap<String, usize>,
    rows: Vec<crate::csv::CsvRecord>,
}

impl Table {
    fn load(path: &Path, required: &[&'static str]) -> Result<Table, OpenbError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| OpenbError::Io {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, file, required)
    }

    fn parse(text: &str, file: String, required: &[&'static str]) -> Result<Table, OpenbError> {
        let mut rows = parse_csv(text)
            .map_err(|e| OpenbError::Row {
                file: file.clone(),
                line: e.line,
                rule: e.to_string(),
            })?
            .into_iter();
        let header = rows.next().map(|r| r.fields).unwrap_or_default();
        let columns: HashMap<String, usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().to_owned(), i))
            .collect();
        for &column in required {
            if !columns.contains_key(column) {
                return Err(OpenbError::MissingColumn {
                    file,
                    column,
                    header: header.join(","),
                });
            }
        }
        Ok(Table {
            file,
            columns,
            rows: rows.collect(),
        })
    }

    fn field<'a>(
        &self,
        row: &'a crate::csv::CsvRecord,
        column: &str,
    ) -> Result<&'a str, OpenbError> {
        let idx = self.columns.get(column).copied().unwrap_or(usize::MAX);
        row.fields
            .get(idx)
            .map(|s| s.trim())
            .ok_or_else(|| OpenbError::Row {
                file: self.file.clone(),
                line: row.line,
                rule: format!(
                    "has {} fields, column '{column}' is missing",
                    row.fields.len()
                ),
            })
    }

    /// A column the file may leave out: `""` when its header has no such column (a row that is too short for a
    /// column the header has is still an error).
    fn optional_field<'a>(
        &self,
        row: &'a crate::csv::CsvRecord,
        column: &str,
    ) -> Result<&'a str, OpenbError> {
        if self.columns.contains_key(column) {
            self.field(row, column)
        } else {
            Ok("")
        }
    }

    fn error(&self, line: usize, field: &str, value: &str, rule: impl Into<String>) -> OpenbError {
        OpenbError::Field {
            file: self.file.clone(),
            line,
            field: field.to_owned(),
            value: value.to_owned(),
            rule: rule.into(),
        }
    }

    /// A non-negative integer field.
    fn uint(&self, row: &crate::csv::CsvRecord, column: &str) -> Result<u64, OpenbError> {
        let v = self.field(row, column)?;
        match v.parse::<i64>() {
            Ok(n) if n < 0 => Err(self.error(row.line, column, v, "must not be negative")),
            Ok(n) => Ok(n as u64),
            Err(_) => Err(self.error(row.line, column, v, "must be an integer")),
        }
    }
}

/// Reads an openb node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn read_openb_nodes(path: &Path) -> Result<Vec<NodeSpec>, OpenbError> {
    nodes_from_table(Table::load(path, &NODE_COLUMNS)?)
}

/// Parses an openb node list from text; `file` names it in errors.
pub fn parse_openb_nodes(text: &str, file: &str) -> Result<Vec<NodeSpec>, OpenbError> {
    nodes_from_table(Table::parse(text, file.to_owned(), &NODE_COLUMNS)?)
}

const NODE_COLUMNS: [&str; 5] = ["sn", "cpu_milli", "memory_mib", "gpu", "model"];

fn nodes_from_table(t: Table) -> Result<Vec<NodeSpec>, OpenbError> {
    let mut seen = HashMap::new();
    let mut nodes = Vec::with_capacity(t.rows.len());
    for row in &t.rows {
        let name = t.field(row, "sn")?.to_owned();
        if name.is_empty() {
            return Err(t.error(row.line, "sn", "", "a node needs a name"));
        }
        if let Some(first) = seen.insert(name.clone(), row.line) {
            return Err(t.error(
                row.line,
                "sn",
                &name,
                format!("duplicate node name (first on line {first})"),
            ));
        }
        let gpu = t.uint(row, "gpu")?;
        let model = t.field(row, "model")?.to_owned();
        if gpu > 0 && model.is_empty() {
            return Err(t.error(row.line, "model", "", "a node with GPUs needs a GPU model"));
        }
        let gpu_count = u32::try_from(gpu)
            .map_err(|_| t.error(row.line, "gpu", &gpu.to_string(), "too large"))?;
        nodes.push(NodeSpec {
            name,
            cpu_milli: t.uint(row, "cpu_milli")?,
            mem_mib: t.uint(row, "memory_mib")?,
            gpu_model: if gpu_count > 0 { model } else { String::new() },
            gpu_count,
            gpu_mem_mib: 0,
            max_pods: OPENB_MAX_PODS,
        });
    }
    Ok(nodes)
}

/// The columns a pod list must have. The others FGD's files carry (`gpu_spec`, `qos`, `pod_phase`, the times)
/// may be absent, as in the `multigpu` lists, and then read as empty, as FGD's simulator reads them.
const POD_COLUMNS: [&str; 5] = ["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"];

/// Reads an openb pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`).
pub fn read_openb_pods(path: &Path) -> Result<Vec<PodRecord>, OpenbError> {
    pods_from_table(Table::load(path, &POD_COLUMNS)?)
}

/// Parses an openb pod list from text; `file` names it in errors.
pub fn parse_openb_pods(text: &str, file: &str) -> Result<Vec<PodRecord>, OpenbError> {
    pods_from_table(Table::parse(text, file.to_owned(), &POD_COLUMNS)?)
}

/// FGD's conversion (`pod_csv_to_yaml.py`): GPU fields only when `num_gpu` ≠ 0; a per-GPU share above 1000
/// is clamped to a whole GPU; `gpu_spec` is split on `|` with empty tokens dropped.
fn pods_from_table(t: Table) -> Result<Vec<PodRecord>, OpenbError> {
    let mut seen = HashMap::new();
    let mut pods = Vec::with_capacity(t.rows.len());
    for row in &t.rows {
        let name = t.field(row, "name")?.to_owned();
        if name.is_empty() {
            return Err(t.error(row.line, "name", "", "a pod needs a name"));
        }
        if let Some(first) = seen.insert(name.clone(), row.line) {
            return Err(t.error(
                row.line,
                "name",
                &name,
                format!("duplicate pod name (first on line {first})"),
            ));
        }
        let cpu = t.uint(row, "cpu_milli")?;
        let mem = t.uint(row, "memory_mib")?;
        let num_gpu = t.uint(row, "num_gpu")?;
        let milli_raw = t.field(row, "gpu_milli")?;
        let milli: i64 = milli_raw
            .parse()
            .map_err(|_| t.error(row.line, "gpu_milli", milli_raw, "must be an integer"))?;
        if milli < 0 {
            return Err(t.error(
                row.line,
                "gpu_milli",
                milli_raw,
                "a GPU share must not be negative",
            ));
        }
        let mut request = InstanceRequest::cpu_only(InstanceKind::Pod, cpu, mem);
        if num_gpu > 0 {
            if milli == 0 {
                return Err(t.error(
                    row.line,
                    "gpu_milli",
                    milli_raw,
                    "a pod with num_gpu > 0 needs gpu_milli > 0",
                ));
            }
            request.gpu_count = u32::try_from(num_gpu)
                .map_err(|_| t.error(row.line, "num_gpu", &num_gpu.to_string(), "too large"))?;
            request.sm_request = (milli as u64).min(u64::from(SM_MILLI)) as u32;
            request.sm_limit = request.sm_request;
            request.gpu_types = t
                .optional_field(row, "gpu_spec")?
                .split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        request.validate().map_err(|e| {
            let column = if e.field.starts_with("sm_") {
                "gpu_milli"
            } else {
                e.field.as_str()
            };
            t.error(row.line, column, &e.value, e.rule.clone())
        })?;
        pods.push(PodRecord {
            name,
            line: row.line,
            request,
        });
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n";

    fn pods(body: &str) -> Result<Vec<PodRecord>, OpenbError> {
        parse_openb_pods(&format!("{HEADER}{body}"), "pods.csv")
    }

    #[test]
    fn converts_like_fgd() {
        let p = pods("a,8000,1024,1,460,,LS,Running,0,1,0\nb,4000,0,2,1000,V100M16||V100M32,LS,Running,0,1,0\nc,100,1,0,0,,BE,Running,0,1,0\nd,1,1,1,1500,,LS,Running,0,1,0\n").unwrap();
        assert_eq!(p[0].request.sm_request, 460);
        assert_eq!(p[0].request.gpu_count, 1);
        assert_eq!(p[1].request.gpu_types, vec!["V100M16", "V100M32"]);
        assert_eq!(p[1].request.total_sm_request(), 2000);
        assert_eq!(p[2].request.gpu_count, 0);
        assert_eq!(
            p[3].request.sm_request, 1000,
            "a share above a GPU is clamped to one GPU"
        );
        assert_eq!(p[3].line, 5);
    }

    #[test]
    fn optional_columns_may_be_absent_like_in_the_multigpu_lists() {
        let p = parse_openb_pods(
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,12000,16384,1,1000\nb,100,1,0,0\nc,1,1,4,1000\n",
            "multigpu.csv",
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].request.sm_request, 1000);
        assert!(p[0].request.gpu_types.is_empty(), "no gpu_spec: any model");
        assert_eq!(p[1].request.gpu_count, 0);
        assert_eq!(p[2].request.total_sm_request(), 4000);
        // A column the header names must still be in every row.
        let err = pods("a,1,1,1,500\n").unwrap_err();
        assert!(
            err.to_string().contains("column 'gpu_spec' is missing"),
            "{err}"
        );
    }

    #[test]
    fn missing_column_is_named() {
        let err = parse_openb_pods(
            "name,cpu_milli,memory_mib,num_gpu,gpu_spec\na,1,1,0,\n",
            "pods.csv",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods.csv:1: missing column 'gpu_milli' (header has: name,cpu_milli,memory_mib,num_gpu,gpu_spec)"
        );
    }

    #[test]
    fn non_numeric_value_names_line_field_and_value() {
        let err =
            pods("a,1,1,0,0,,LS,Running,0,1,0\nb,lots,1,0,0,,LS,Running,0,1,0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods.csv:3: field 'cpu_milli' = \"lots\": must be an integer"
        );
    }

    #[test]
    fn negative_share_is_refused() {
        let err = pods("a,1,1,1,-200,,LS,Running,0,1,0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods.csv:2: field 'gpu_milli' = \"-200\": a GPU share must not be negative"
        );
    }

    #[test]
    fn negative_count_and_short_rows_are_refused() {
        let err = pods("a,1,1,-1,200,,LS,Running,0,1,0\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("pods.csv:2: field 'num_gpu' = \"-1\": must not be negative"),
            "{err}"
        );
        let err = pods("a,1,1\n").unwrap_err();
        assert!(
            err.to_string().starts_with("pods.csv:2: has 3 fields"),
            "{err}"
        );
    }

    #[test]
    fn multi_gpu_share_breaks_the_whole_gpu_rule() {
        let err = pods("a,1,1,2,500,,LS,Running,0,1,0\n").unwrap_err();
        assert!(
            err.to_string().contains("pods.csv:2: field 'gpu_milli'"),
            "{err}"
        );
        assert!(err.to_string().contains("whole GPUs"), "{err}");
    }

    #[test]
    fn duplicate_names_point_at_the_first() {
        let err = pods("a,1,1,0,0,,LS,Running,0,1,0\na,1,1,0,0,,LS,Running,0,1,0\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate pod name (first on line 2)"),
            "{err}"
        );
    }

    #[test]
    fn nodes_parse_and_reject_bad_rows() {
        let n = parse_openb_nodes(
            "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,32000,1024,0,\n",
            "nodes.csv",
        )
        .unwrap();
        assert_eq!(
            (n[0].gpu_count, n[0].gpu_model.as_str(), n[1].gpu_count),
            (2, "P100", 0)
        );
        let err = parse_openb_nodes(
            "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,\n",
            "nodes.csv",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("nodes.csv:2: field 'model'"),
            "{err}"
        );
        let err = parse_openb_nodes("sn,cpu_milli,memory_mib,model\n", "nodes.csv").unwrap_err();
        assert!(err.to_string().contains("missing column 'gpu'"), "{err}");
    }
}
