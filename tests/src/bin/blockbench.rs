//! Block encoding on synthetic spans: bytes on disk per span (beside the OTLP protobuf bytes
//! of the same spans, the baseline), per column, and the encode rate, for a few block layouts.
//!
//! `cargo run --release -p skein-tests --bin blockbench -- --spans 1000000`

use clap::Parser;
use parquet::file::reader::{FileReader, SerializedFileReader};
use prost::Message;
use skein_otlp::synth::{Synth, SynthConfig};
use skein_storage::config::BlockConfig;
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    /// Spans to encode.
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Also print the compressed bytes per span of every column.
    #[arg(long)]
    columns: bool,
    /// Only the default layout.
    #[arg(long)]
    default_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut synth = Synth::new(SynthConfig::default());
    let (mut batches, mut spans, mut proto) = (Vec::new(), 0usize, 0usize);
    while spans < args.spans {
        // Requests of 20 traces spread over an hour, as a collector receives them.
        let (r, _) = synth.batch(20, now - (spans as u64 % 3_600_000) * 1_000_000);
        proto += r.encoded_len();
        let b = skein_columnar::spans::build(&r)?;
        spans += b.num_rows();
        batches.push(b);
    }
    println!("{spans} spans; OTLP protobuf {:.1} B/span", proto as f64 / spans as f64);
    let refs: Vec<_> = batches.iter().collect();
    // Where encode's time goes: gathering rows in trace order (interleave) alone, against a
    // plain Parquet write of the same batches unsorted (the baseline).
    let t = Instant::now();
    let order: Vec<(usize, usize)> = (0..refs.len()).flat_map(|b| (0..refs[b].num_rows()).map(move |r| (b, r))).collect();
    for chunk in order.chunks(8192) {
        std::hint::black_box(arrow::compute::interleave_record_batch(&refs, chunk)?);
    }
    println!("interleave from the batches (no write; what encode did before concat+take) {:.0} spans/s", spans as f64 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), skein_columnar::spans::schema(), None)?;
    for b in &batches {
        w.write(b)?;
    }
    let plain = w.into_inner()?;
    println!("plain parquet write       {:.0} spans/s ({:.1} B/span, default writer settings, unsorted)", spans as f64 / t.elapsed().as_secs_f64(), plain.len() as f64 / spans as f64);
    let mut layouts = vec![("default", BlockConfig::default())];
    if !args.default_only {
        layouts.push(("zstd 9", BlockConfig { zstd_level: 9, ..Default::default() }));
        layouts.push(("pages of 32768 rows", BlockConfig { page_rows: 32_768, ..Default::default() }));
        layouts.push(("row groups of 1M rows", BlockConfig { row_group_rows: 1 << 20, page_rows: 32_768, ..Default::default() }));
    }
    for (name, cfg) in layouts {
        let t = Instant::now();
        let enc = skein_storage::block::write::encode(&refs, &cfg)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name:<24} {:>6.1} B/span ({:.1}x smaller than protobuf), encode {:.0} spans/s",
            enc.bytes.len() as f64 / spans as f64,
            proto as f64 / enc.bytes.len() as f64,
            spans as f64 / secs
        );
        if args.columns {
            let reader = SerializedFileReader::new(bytes::Bytes::from(enc.bytes))?;
            let mut per: BTreeMap<String, i64> = BTreeMap::new();
            for rg in reader.metadata().row_groups() {
                for c in rg.columns() {
                    *per.entry(c.column_path().parts()[0].clone()).or_default() += c.compressed_size();
                }
            }
            let mut per: Vec<_> = per.into_iter().collect();
            per.sort_by_key(|(_, b)| -b);
            for (col, b) in per {
                println!("    {col:<26} {:>6.2} B/span", b as f64 / spans as f64);
            }
        }
    }
    Ok(())
}
