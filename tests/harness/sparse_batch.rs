//! A record batch that claims more offsets than it holds records, as
//! compaction leaves them on a Kafka broker: the partition's offsets skip
//! the rest. No client library writes one, so it is sent as a raw Produce
//! request (version 3, record batch format 2).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Stack;

/// Writes one record (`key`, `payload`) to partition 0 of `topic` in a batch
/// that takes `1 + skipped` offsets: the next message written lands
/// `skipped` offsets after the one right after it. Returns the record's
/// offset.
pub async fn produce_with_offsets_skipped(
    topic: &str,
    key: &[u8],
    payload: &[u8],
    skipped: i32,
) -> Result<i64> {
    let batch = record_batch(key, payload, skipped);
    let mut body = Vec::new();
    put_i16(&mut body, 0); // Produce
    put_i16(&mut body, 3);
    put_i32(&mut body, 1); // correlation id
    put_string(&mut body, "sync-bridge-tests");
    put_i16(&mut body, -1); // no transactional id
    put_i16(&mut body, -1); // acks: all
    put_i32(&mut body, 30_000);
    put_i32(&mut body, 1); // topics
    put_string(&mut body, topic);
    put_i32(&mut body, 1); // partitions
    put_i32(&mut body, 0);
    put_i32(&mut body, batch.len() as i32);
    body.extend_from_slice(&batch);

    let broker = Stack::get().brokers.clone();
    let mut stream = TcpStream::connect(&broker)
        .await
        .with_context(|| format!("connect to {broker}"))?;
    stream.write_all(&(body.len() as i32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    let length = stream.read_i32().await?;
    ensure!((0..1 << 20).contains(&length), "response length {length}");
    let mut response = vec![0; length as usize];
    stream.read_exact(&mut response).await?;
    // correlation id, topics [name, partitions [index, error, base offset, ...]]
    let mut at = 4 + 4;
    let name_len = i16::from_be_bytes(take(&response, &mut at)?) as usize;
    at += name_len + 4 + 4;
    let error = i16::from_be_bytes(take(&response, &mut at)?);
    let offset = i64::from_be_bytes(take(&response, &mut at)?);
    if error != 0 {
        bail!("produce to {topic} failed with error code {error}");
    }
    Ok(offset)
}

fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N]> {
    let slice = bytes
        .get(*at..*at + N)
        .context("produce response too short")?;
    *at += N;
    Ok(slice.try_into()?)
}

fn record_batch(key: &[u8], payload: &[u8], skipped: i32) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut record = Vec::new();
    record.push(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, key.len() as i64);
    record.extend_from_slice(key);
    put_varint(&mut record, payload.len() as i64);
    record.extend_from_slice(payload);
    put_varint(&mut record, 0); // headers

    // From the attributes on: what the CRC covers.
    let mut covered = Vec::new();
    put_i16(&mut covered, 0); // attributes: no compression, not transactional
    put_i32(&mut covered, skipped); // last offset delta
    put_i64(&mut covered, now);
    put_i64(&mut covered, now);
    put_i64(&mut covered, -1); // producer id
    put_i16(&mut covered, -1); // producer epoch
    put_i32(&mut covered, -1); // base sequence
    put_i32(&mut covered, 1); // records
    put_varint(&mut covered, record.len() as i64);
    covered.extend_from_slice(&record);

    let mut batch = Vec::new();
    put_i64(&mut batch, 0); // base offset (the broker assigns it)
    put_i32(&mut batch, (4 + 1 + 4 + covered.len()) as i32);
    put_i32(&mut batch, -1); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&covered).to_be_bytes());
    batch.extend_from_slice(&covered);
    batch
}

fn put_i16(out: &mut Vec<u8>, value: i16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    put_i16(out, value.len() as i16);
    out.extend_from_slice(value.as_bytes());
}

/// A zigzag variable-length integer.
fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// CRC-32C (Castagnoli), bit by bit: a test writes one batch.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
