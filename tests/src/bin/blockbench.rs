//! Block encoding on synthetic spans: bytes on disk per span (beside the OTLP protobuf bytes
//! of the same spans, the baseline), per column, and the encode rate, for a few block layouts.
//!
//! `cargo run --release -p skein-tests --features bench --bin blockbench -- --spans 1000000`

use clap::Parser;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::WriterPropertiesBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
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
    /// Rows per row group of the block the trace lookups read (default: the default layout's).
    #[arg(long)]
    lookup_row_group_rows: Option<usize>,
    /// Rows per page of the block the trace lookups read.
    #[arg(long)]
    lookup_page_rows: Option<usize>,
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
    {
        // A second baseline: the same requests as one zstd stream (level 9, long window), what
        // a general-purpose compressor makes of the row-wise data.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 9)?;
        enc.long_distance_matching(true)?;
        enc.window_log(27)?;
        let mut synth = Synth::new(SynthConfig::default());
        let mut n = 0usize;
        while n < spans {
            let (r, _) = synth.batch(20, now - (n as u64 % 3_600_000) * 1_000_000);
            n += r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>();
            std::io::Write::write_all(&mut enc, &r.encode_to_vec())?;
        }
        println!("OTLP protobuf as one zstd-9 stream (long window): {:.1} B/span", enc.finish()?.len() as f64 / n as f64);
    }
    let refs: Vec<_> = batches.iter().collect();
    // Where encode's time goes: gathering rows in trace order (interleave) alone, against a
    // plain Parquet write of the same batches unsorted (the baseline).
    let t = Instant::now();
    let order: Vec<(usize, usize)> = (0..refs.len()).flat_map(|b| (0..refs[b].num_rows()).map(move |r| (b, r))).collect();
    for chunk in order.chunks(8192) {
        std::hint::black_box(arrow::compute::interleave_record_batch(&refs, chunk)?);
    }
    println!(
        "interleave from the batches (no write; what encode did before concat+take) {:.0} spans/s",
        spans as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), skein_columnar::spans::schema(), None)?;
    for b in &batches {
        w.write(b)?;
    }
    let plain = w.into_inner()?;
    println!(
        "plain parquet write       {:.0} spans/s ({:.1} B/span, default writer settings, unsorted)",
        spans as f64 / t.elapsed().as_secs_f64(),
        plain.len() as f64 / spans as f64
    );
    // Trace by id from one block on the local disk: the storage read alone (no HTTP, no
    // assembly), beside decoding the same spans from a plain sequential read of the file.
    {
        let page_rows = args.lookup_page_rows.unwrap_or(BlockConfig::default().page_rows);
        let row_group_rows = args.lookup_row_group_rows.unwrap_or(BlockConfig::default().row_group_rows);
        let enc = skein_storage::block::write::encode(&refs, &BlockConfig { page_rows, row_group_rows, ..Default::default() })?;
        println!(
            "lookup block: {:.1} B/span, {row_group_rows} rows per row group, {page_rows} per page",
            enc.bytes.len() as f64 / spans as f64
        );
        let dir = tempfile::tempdir()?;
        let objects = skein_storage::objstore::open(&skein_storage::StorageConfig::default(), dir.path())?;
        std::fs::write(dir.path().join("b.parquet"), &enc.bytes)?;
        let meta = skein_storage::manifest::BlockMeta {
            id: "b".into(),
            path: "b.parquet".into(),
            rows: enc.rows,
            bytes: enc.bytes.len() as u64,
            min_start_ns: enc.min_start_ns,
            max_start_ns: enc.max_start_ns,
            max_end_ns: enc.max_end_ns,
            level: 0,
            created_unix_ms: 0,
            operations: Default::default(),
            columns: enc.columns.clone(),
        };
        let block = skein_storage::block::Block::new(meta);
        let ids: Vec<[u8; 16]> = batches.iter().step_by(7).map(|b| skein_columnar::spans::SpanView::new(b).trace_id(0)).take(300).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let mut lat = rt.block_on(async {
            block.warm(&objects).await?;
            let mut lat = Vec::new();
            for id in &ids {
                let t = Instant::now();
                let got = block.read_trace(&objects, id).await?;
                lat.push(t.elapsed());
                anyhow::ensure!(!got.is_empty(), "trace not found");
            }
            Ok::<_, anyhow::Error>(lat)
        })?;
        lat.sort();
        println!("read_trace from a {}-span block: p50 {:?} p99 {:?}", enc.rows, lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
    }
    type Layout = (&'static str, BlockConfig, Box<dyn Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder>);
    let same = || Box::new(|b| b) as Box<dyn Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder>;
    let mut layouts: Vec<Layout> = vec![("default", BlockConfig::default(), same())];
    if !args.default_only {
        layouts.push(("zstd 9", BlockConfig { zstd_level: 9, ..Default::default() }, same()));
        layouts.push(("pages of 8192 rows", BlockConfig { page_rows: 8192, ..Default::default() }, same()));
        layouts.push(("row groups of 32768", BlockConfig { row_group_rows: 32_768, ..Default::default() }, same()));
        layouts.push(("groups 32768, pages 8192", BlockConfig { row_group_rows: 32_768, page_rows: 8192, ..Default::default() }, same()));
        layouts.push(("groups 65536, pages 8192", BlockConfig { row_group_rows: 65_536, page_rows: 8192, ..Default::default() }, same()));
        layouts.push((
            "span_id plain, no zstd",
            BlockConfig::default(),
            Box::new(|b: WriterPropertiesBuilder| b.set_column_compression(ColumnPath::from("span_id"), Compression::UNCOMPRESSED)),
        ));
        layouts.push((
            "times delta",
            BlockConfig::default(),
            Box::new(|b: WriterPropertiesBuilder| {
                b.set_column_encoding(ColumnPath::from("start_time"), Encoding::DELTA_BINARY_PACKED)
                    .set_column_encoding(ColumnPath::from("duration_ns"), Encoding::DELTA_BINARY_PACKED)
            }),
        ));
    }
    for (name, cfg, tweak) in layouts {
        let t = Instant::now();
        let enc = skein_storage::block::write::encode_with(&refs, &cfg, &*tweak)?;
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
                    *per.entry(c.column_path().string()).or_default() += c.compressed_size();
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
