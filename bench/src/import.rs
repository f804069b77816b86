//! Contact import: one CSV upload of many rows (a million in full mode), which ingest reads
//! as a stream and writes to the `contacts` bucket in batches. Measures rows/s and whether
//! ingest's memory stays flat, i.e. that the file is never held whole.

use std::{fmt::Write as _, path::Path, time::Instant};

use hyper::{Method, StatusCode};
use indicatif::ProgressBar;

use crate::{
    Scale,
    http::{self, Conn},
    report::{Figure, Report},
    stack::{Cpu, Env, Servers, Services, cpu_text, memory},
};

pub async fn run(
    root: &Path,
    report: &mut Report,
    scale: &Scale,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let rows = scale.import_rows;
    let servers = Servers::start(root.join("target/bench/import"))?;
    let services = Services::start(root, &servers, &["ccm-ingest"], &Env::default()).await?;
    let api = services.api()?.to_owned();
    let campaign = http::campaign(&api, "bench-import", 100).await?;

    bar.set_message(format!("import: writing a CSV of {rows} rows"));
    // A time zone and a custom column, as a real contact list would have.
    let mut csv = String::with_capacity(rows * 40 + 64);
    csv.push_str("phone_number,time_zone,segment\n");
    for i in 0..rows {
        writeln!(
            csv,
            "+1{},America/New_York,s{}",
            3_100_000_000_u64 + i as u64,
            i % 7
        )?;
    }
    let file_mib = csv.len() as f64 / 1024.0 / 1024.0;
    let before = memory(services.pid("ccm-ingest"));
    bar.set_message(format!("import: uploading {rows} rows ({file_mib:.0} MiB)"));
    let cpu_before = Cpu::now(&servers, &services);
    let mut conn = Conn::open(&api).await?;
    let began = Instant::now();
    let (status, body) = conn
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{campaign}/contacts/import"),
            csv.into(),
        )
        .await?;
    let took = began.elapsed();
    let cpu = Cpu::now(&servers, &services).per_unit_ms(&cpu_before, rows);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    anyhow::ensure!(
        status == StatusCode::OK && answer["imported"] == rows && answer["rejected"] == 0,
        "import of {rows} rows: {status} {answer}"
    );
    let ingest = memory(services.pid("ccm-ingest"));
    let conditions = format!(
        "{rows} rows ({file_mib:.0} MiB, phone_number,time_zone,segment) in one request, \
         {:.1} s; ingest RSS {:.0} MiB before, peak {:.0} MiB after; CPU per row (ms): {}",
        took.as_secs_f64(),
        before.rss_mib,
        ingest.peak_mib,
        cpu_text(&cpu)
    );
    report.ccm.push(Figure::new(
        "import.rate",
        rows as f64 / took.as_secs_f64(),
        "rows/s",
        conditions.clone(),
    ));
    report.ccm.push(Figure::new(
        "import.ingest.rss_peak",
        ingest.peak_mib,
        "MiB",
        conditions,
    ));
    Ok(())
}
