//! Importer behaviour on malformed input: every case names file, line, column and reason.

use std::path::{Path, PathBuf};

use suanli_sim::import::openb::{load_nodes, load_pods};
use suanli_sim::import::philly::load_jobs;
use suanli_sim::import::{ImportError, RowPolicy};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write fixture");
        path
    }
}

const POD_HEADER: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n";

fn pods_error(contents: &str) -> (PathBuf, String) {
    let fx = Fixture::new();
    let path = fx.file("pods.csv", contents);
    let err = load_pods(&path, RowPolicy::Fail).expect_err("malformed input must fail");
    // Keep the directory alive until the message is rendered.
    let message = err.to_string();
    drop(fx);
    (path, message)
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn good_pod_list_loads_with_all_fields() {
    let fx = Fixture::new();
    let path = fx.file(
        "pods.csv",
        &format!(
            "{POD_HEADER}p0,12000,16384,1,1000,,LS,Running,0,12537496,0\n\
             p1,6000,12288,1,460,V100M16|G2,BE,Failed,427061,,\n\
             p2,4000,8192,0,0,,LS,Running,5,10,5\n\
             p3,88000,327680,8,1000.0,G3,LS,Running,1,2,1\n"
        ),
    );
    let pods = load_pods(&path, RowPolicy::Fail).expect("valid file");
    assert_eq!(pods.items.len(), 4);
    assert_eq!(pods.skipped_count(), 0);
    let p1 = &pods.items[1].request;
    assert_eq!((p1.num_gpu, p1.gpu_milli), (1, 460));
    assert_eq!(
        p1.models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["V100M16", "G2"]
    );
    assert_eq!(pods.items[1].deletion_time, None);
    assert_eq!(
        pods.items[3].request.gpu_milli, 1000,
        "1000.0 reads as 1000"
    );
}

#[test]
fn five_column_pod_lists_load() {
    let fx = Fixture::new();
    let path = fx.file(
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,500\np1,2000,2048,2,1000\n",
    );
    let pods = load_pods(&path, RowPolicy::Fail).expect("five columns are enough");
    assert_eq!(pods.items.len(), 2);
    assert!(pods.items[0].request.models.is_empty());
    assert_eq!(pods.items[0].creation_time, None);
}

#[test]
fn wrong_column_count() {
    let (path, msg) = pods_error(&format!("{POD_HEADER}p0,1000,1024,1,500,,LS\n"));
    assert_eq!(
        msg,
        format!(
            "{}:2: expected 11 fields as in the header, found 7",
            p(&path)
        )
    );
}

#[test]
fn non_numeric_field() {
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,lots,1024,1,500\n");
    assert_eq!(
        msg,
        format!("{}:2:2 (cpu_milli): not a number: \"lots\"", p(&path))
    );
}

#[test]
fn negative_number() {
    let (path, msg) = pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,-5,1,500\n");
    assert_eq!(
        msg,
        format!(
            "{}:2:3 (memory_mib): negative number -5, expected a non-negative integer",
            p(&path)
        )
    );
}

#[test]
fn fractional_count() {
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1.5,500\n");
    assert_eq!(
        msg,
        format!("{}:2:4 (num_gpu): not a whole number: \"1.5\"", p(&path))
    );
}

#[test]
fn empty_required_field() {
    let (path, msg) = pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,,1,500\n");
    assert_eq!(msg, format!("{}:2:3 (memory_mib): empty value", p(&path)));
}

#[test]
fn gpu_milli_out_of_range() {
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,1500\n");
    assert_eq!(
        msg,
        format!(
            "{}:2:5 (gpu_milli): gpu_milli 1500 out of range 0..=1000",
            p(&path)
        )
    );
}

#[test]
fn multi_gpu_pod_with_partial_gpu_milli() {
    let (path, msg) = pods_error(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,500\np1,1000,1024,2,500\n",
    );
    assert_eq!(
        msg,
        format!(
            "{}:3:5 (gpu_milli): multi-GPU pod (num_gpu 2) with gpu_milli 500; only one-GPU pods may share a GPU, so expected 1000",
            p(&path)
        )
    );
}

#[test]
fn gpu_milli_without_gpus_and_gpus_without_milli() {
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,0,300\n");
    assert_eq!(
        msg,
        format!(
            "{}:2:5 (gpu_milli): gpu_milli 300 on a pod with num_gpu 0",
            p(&path)
        )
    );
    let (path, msg) = pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,4,0\n");
    assert_eq!(
        msg,
        format!(
            "{}:2:5 (gpu_milli): gpu_milli 0 on a pod with num_gpu 4; expected 1..=1000",
            p(&path)
        )
    );
}

#[test]
fn bad_gpu_model_and_time_order() {
    let (path, msg) = pods_error(&format!(
        "{POD_HEADER}p0,1000,1024,1,500,V100 32GB,LS,Running,0,1,0\n"
    ));
    assert!(
        msg.starts_with(&format!(
            "{}:2:6 (gpu_spec): bad GPU model \"V100 32GB\"",
            p(&path)
        )),
        "{msg}"
    );
    let (path, msg) = pods_error(&format!(
        "{POD_HEADER}p0,1000,1024,1,500,,LS,Running,100,50,100\n"
    ));
    assert_eq!(
        msg,
        format!(
            "{}:2:10 (deletion_time): deletion_time 50 is before creation_time 100",
            p(&path)
        )
    );
}

#[test]
fn unknown_column_in_header() {
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli,colour\np0,1,1,0,0,red\n");
    assert_eq!(
        msg,
        format!(
            "{}:1: bad header: unknown column \"colour\" at column 6; known columns: name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time",
            p(&path)
        )
    );
}

#[test]
fn missing_and_duplicate_columns() {
    let (path, msg) = pods_error("name,cpu_milli,memory_mib,gpu_milli\np0,1,1,0\n");
    assert!(
        msg.starts_with(&format!(
            "{}:1: bad header: missing required column \"num_gpu\"",
            p(&path)
        )),
        "{msg}"
    );
    let (path, msg) =
        pods_error("name,cpu_milli,memory_mib,num_gpu,gpu_milli,name\np0,1,1,0,0,p0\n");
    assert_eq!(
        msg,
        format!(
            "{}:1: bad header: column \"name\" appears twice (column 6)",
            p(&path)
        )
    );
}

#[test]
fn empty_file_and_header_only() {
    let (path, msg) = pods_error("");
    assert_eq!(
        msg,
        format!(
            "{}: empty file: expected a header row (name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time)",
            p(&path)
        )
    );
    let (path, msg) = pods_error(POD_HEADER);
    assert_eq!(msg, format!("{}: no data rows after the header", p(&path)));
}

#[test]
fn missing_file_names_the_path() {
    let path = Path::new("/nonexistent/suanli/pods.csv");
    let err = load_pods(path, RowPolicy::Fail).expect_err("no such file");
    assert!(matches!(err, ImportError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/suanli/pods.csv: cannot read:"),
        "{err}"
    );
}

#[test]
fn skip_bad_rows_counts_and_keeps_the_good_ones() {
    let fx = Fixture::new();
    let path = fx.file(
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n\
         ok0,1000,1024,1,500\n\
         bad1,x,1024,1,500\n\
         ok2,1000,1024,0,0\n\
         bad3,1000,1024,2,300\n\
         bad4,1000\n\
         ok5,1000,1024,8,1000\n",
    );
    let pods = load_pods(&path, RowPolicy::Skip).expect("bad rows are skipped");
    assert_eq!(
        pods.items
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["ok0", "ok2", "ok5"]
    );
    assert_eq!(pods.skipped_count(), 3);
    let lines: Vec<u64> = pods.skipped.iter().map(|e| e.location.line).collect();
    assert_eq!(lines, [3, 5, 6]);
    assert_eq!(pods.skipped[0].location.field.as_deref(), Some("cpu_milli"));
    // Without skipping, the first bad row fails the import.
    let err = load_pods(&path, RowPolicy::Fail).expect_err("fails on line 3");
    assert!(
        err.to_string().contains("pods.csv:3:2 (cpu_milli)"),
        "{err}"
    );
}

#[test]
fn skip_mode_still_fails_when_nothing_is_left() {
    let fx = Fixture::new();
    let path = fx.file(
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nbad,x,1,1,1\n",
    );
    let err = load_pods(&path, RowPolicy::Skip).expect_err("no good rows");
    assert!(
        err.to_string().contains("all 1 data rows are malformed"),
        "{err}"
    );
}

#[test]
fn node_list_problems() {
    let fx = Fixture::new();
    let good = fx.file(
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,32000,131072,0,\n",
    );
    let nodes = load_nodes(&good, RowPolicy::Fail).expect("valid");
    assert_eq!(nodes.items.len(), 2);
    assert_eq!(nodes.items[1].model, None);

    let bad = fx.file(
        "bad.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,8,\n",
    );
    let msg = load_nodes(&bad, RowPolicy::Fail)
        .expect_err("no model")
        .to_string();
    assert_eq!(
        msg,
        format!("{}:2:5 (model): node has 8 GPUs but no model", p(&bad))
    );

    let bad = fx.file(
        "bad2.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,-1,T4\n",
    );
    let msg = load_nodes(&bad, RowPolicy::Fail)
        .expect_err("negative")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "{}:2:4 (gpu): negative number -1, expected a non-negative integer",
            p(&bad)
        )
    );
}

#[test]
fn philly_rows_and_bad_timestamps() {
    let fx = Fixture::new();
    let good = fx.file(
        "jobs.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n\
         2017-10-09 07:01:55,66.0,1,66.0,11cb48\n\
         2017-10-09 06:13:03,2951.0,8,23608.0,6214e9\n\n",
    );
    let jobs = load_jobs(&good, RowPolicy::Fail).expect("valid, trailing blank line ignored");
    assert_eq!(jobs.items.len(), 2);
    assert_eq!(jobs.items[0].submitted, 1_507_532_515);
    assert_eq!(jobs.items[1].virtual_cluster, "6214e9");

    let bad = fx.file(
        "jobs2.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,1,66.0,a\n2017-13-09 07:01:55,66.0,1,66.0,a\n",
    );
    let msg = load_jobs(&bad, RowPolicy::Fail)
        .expect_err("bad month")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "{}:3:1 (timestamp): bad timestamp \"2017-13-09 07:01:55\", expected YYYY-MM-DD HH:MM:SS",
            p(&bad)
        )
    );

    let zero = fx.file(
        "jobs3.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,0,0,a\n",
    );
    let msg = load_jobs(&zero, RowPolicy::Fail)
        .expect_err("zero GPUs")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "{}:2:3 (num_gpus): num_gpus 0; a Philly job uses at least one GPU",
            p(&zero)
        )
    );

    let neg = fx.file(
        "jobs4.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,-3,1,0,a\n",
    );
    let msg = load_jobs(&neg, RowPolicy::Fail)
        .expect_err("negative duration")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "{}:2:2 (duration): negative number -3, expected >= 0",
            p(&neg)
        )
    );

    let skipped = load_jobs(&bad, RowPolicy::Skip).expect("one good row");
    assert_eq!((skipped.items.len(), skipped.skipped_count()), (1, 1));
}

#[test]
fn shared_traces_load_without_errors() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/traces"));
    if !root.exists() {
        eprintln!("skipping: {} is absent", root.display());
        return;
    }
    let nodes = load_nodes(
        &root.join("openb/openb_node_list_gpu_node.csv"),
        RowPolicy::Fail,
    )
    .expect("node list");
    assert_eq!(nodes.items.len(), 1213);
    assert_eq!(
        nodes.items.iter().map(|n| u64::from(n.gpus)).sum::<u64>(),
        6212
    );
    let pods = load_pods(
        &root.join("openb/openb_pod_list_default.csv"),
        RowPolicy::Fail,
    )
    .expect("pod list");
    assert_eq!(pods.items.len(), 8152);
    let jobs = load_jobs(&root.join("philly/philly_jobs.csv"), RowPolicy::Fail).expect("philly");
    assert_eq!(
        jobs.items.len(),
        82247,
        "82249 lines: header, 82247 jobs, a trailing blank line"
    );
}
