//! `s3://bucket/prefix` via aws-sdk-s3. Large objects go up as multipart uploads with bounded
//! part buffers and a few parts in flight; any failure aborts the multipart upload, so nothing
//! half-written stays billed in the bucket. Small objects use a single PutObject.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::part_pool::PartPool;
use super::{BodyChunk, BodyReceiver, ByteStream, ObjectInfo, PendingUpload, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Path-style addressing (`http://host/bucket/key`), for MinIO, Ceph and similar servers.
    pub path_style: bool,
    /// Bytes per multipart part (S3's minimum is 5 MiB, except for the last part).
    pub part_size: usize,
    /// Parts uploaded concurrently; memory use is about `part_size * (parts_in_flight + 1)`.
    pub parts_in_flight: usize,
    /// Attempts per request, with exponential backoff between them.
    pub max_attempts: u32,
    /// Objects of a size known up front and at most this many bytes go up in one streamed
    /// PutObject instead of a multipart upload: no parts buffered (less memory), and no
    /// completion step, in which servers that store objects as files (s3s-fs, MinIO's FS mode)
    /// copy and hash the whole object again (3.4 s of a 9 s 1 GiB backup on s3s-fs). The price:
    /// a failed request cannot be retried part by part, so the whole object fails (and the
    /// backup with it; the schedule's next run starts over). 0 turns it off. S3 takes at most
    /// 5 GiB in one PutObject.
    pub single_put_max: u64,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            path_style: false,
            // 3 × 6 MiB in flight + 1 filling: 24 MiB of buffers. Measured against 8 MiB × 2,
            // 8 MiB × 4 and 16 MiB × 1 (backup/bench/compare.sh): the fastest, same memory.
            part_size: 6 * 1024 * 1024,
            parts_in_flight: 3,
            max_attempts: 5,
            single_put_max: 5 * 1024 * 1024 * 1024,
        }
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    options: S3Options,
}

/// An SDK error and its sources on one line ("dispatch failure: io error: ... Connection
/// refused"); the SDK's top-level messages alone don't say what went wrong.
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = err.as_service_error() {
        if let (Some(code), Some(detail)) = (service.code(), service.message()) {
            return format!("{err}: {code}: {detail}");
        }
    }
    error_chain(err)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

impl S3Store {
    pub async fn connect(bucket: &str, prefix: &str, options: &S3Options) -> S3Store {
        // S3 needs a region to sign requests even when the server ignores it (MinIO, moto).
        let region = RegionProviderChain::default_provider().or_else(Region::new("us-east-1"));
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            // Third-party S3 servers often reject or mangle the newer default checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        S3Store {
            client: Client::from_conf(config),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            options: options.clone(),
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    fn list_prefix(&self) -> Option<String> {
        (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix))
    }

    fn name_of(&self, key: &str) -> String {
        match self.list_prefix() {
            Some(prefix) => key.strip_prefix(&prefix).unwrap_or(key).to_string(),
            None => key.to_string(),
        }
    }

    fn error(&self, operation: &'static str, name: &str, reason: String) -> StoreError {
        StoreError::Io {
            store: self.url(),
            operation,
            name: name.to_string(),
            reason,
        }
    }

    async fn put_single(&self, name: &str, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .body(SdkByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("uploading", name, describe(&e)))?;
        Ok(())
    }

    async fn create_upload(&self, name: &str) -> Result<String, StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.error("starting multipart upload of", name, describe(&e)))?;
        created.upload_id().map(str::to_string).ok_or_else(|| {
            self.error(
                "starting multipart upload of",
                name,
                "no upload id in the response".into(),
            )
        })
    }

    fn spawn_part(
        &self,
        parts: &mut JoinSet<Result<CompletedPart, String>>,
        name: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.key(name))
            .upload_id(upload_id)
            .part_number(number)
            .body(SdkByteStream::from(data))
            .customize()
            // The signed manifest records the object's SHA-256 (checked by verify and restore)
            // and age authenticates encrypted data, so hashing each part again just to sign it
            // would cost a full pass over the backup (and the server another) for no new check.
            .disable_payload_signing();
        parts.spawn(async move {
            let uploaded = request
                .send()
                .await
                .map_err(|e| format!("part {number}: {}", describe(&e)))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .build())
        });
    }

    /// Wait for a free upload slot, then start uploading `part` as part `number`.
    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        in_flight: &mut JoinSet<Result<CompletedPart, String>>,
        completed: &mut Vec<CompletedPart>,
        name: &str,
        upload_id: &str,
        number: i32,
        part: Bytes,
    ) -> Result<(), StoreError> {
        while in_flight.len() >= self.options.parts_in_flight.max(1) {
            let done = join_part(in_flight)
                .await
                .map_err(|e| self.error("uploading", name, e))?;
            completed.push(done);
        }
        self.spawn_part(in_flight, name, upload_id, number, part);
        Ok(())
    }

    /// Receive the body, uploading each full part as it fills (the multipart upload is created
    /// with the first full part). Returns the byte count, and the remainder not yet sent.
    #[allow(clippy::too_many_arguments)]
    async fn receive_parts(
        &self,
        name: &str,
        body: &mut BodyReceiver,
        pool: &mut PartPool,
        upload: &mut Option<String>,
        in_flight: &mut JoinSet<Result<CompletedPart, String>>,
        completed: &mut Vec<CompletedPart>,
        number: &mut i32,
    ) -> Result<(u64, Bytes), StoreError> {
        let part_size = pool.part_size();
        let mut buffer = pool.take().await;
        let mut total = 0u64;
        loop {
            match body.recv().await {
                Some(BodyChunk::Data(data)) => {
                    total += data.len() as u64;
                    // Parts are cut at exactly part_size so buffers never grow past it.
                    let mut rest: &[u8] = &data;
                    while !rest.is_empty() {
                        let take = (part_size - buffer.len()).min(rest.len());
                        buffer.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if buffer.len() == part_size {
                            let upload_id = match upload {
                                Some(id) => id.clone(),
                                None => upload.insert(self.create_upload(name).await?).clone(),
                            };
                            *number += 1;
                            let part = pool.lend(std::mem::take(&mut buffer));
                            self.send_part(in_flight, completed, name, &upload_id, *number, part)
                                .await?;
                            buffer = pool.take().await;
                        }
                    }
                }
                Some(BodyChunk::End) => return Ok((total, pool.lend(buffer))),
                None => {
                    return Err(StoreError::Abandoned {
                        store: self.url(),
                        name: name.to_string(),
                    })
                }
            }
        }
    }

    /// Send the last part, wait for every part, and complete the upload.
    async fn complete_upload(
        &self,
        name: &str,
        upload_id: &str,
        last: Bytes,
        mut in_flight: JoinSet<Result<CompletedPart, String>>,
        mut completed: Vec<CompletedPart>,
        number: i32,
    ) -> Result<(), StoreError> {
        if !last.is_empty() {
            self.send_part(&mut in_flight, &mut completed, name, upload_id, number + 1, last)
                .await?;
        }
        while !in_flight.is_empty() {
            let done = join_part(&mut in_flight)
                .await
                .map_err(|e| self.error("uploading", name, e))?;
            completed.push(done);
        }
        completed.sort_by_key(|part| part.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.key(name))
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(|e| self.error("completing multipart upload of", name, describe(&e)))?;
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), String> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }
}

/// The body of one streamed PutObject: the writer's chunks, exactly `size` bytes of them. A
/// writer that gives up (the channel closes without [`BodyChunk::End`]) or sends more or less
/// than announced fails the body, so the request fails and the server commits nothing.
struct ChannelBody {
    body: BodyReceiver,
    size: u64,
    sent: u64,
    done: bool,
    abandoned: Arc<AtomicBool>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let failed = |this: &mut Self, reason: String| {
            this.done = true;
            Poll::Ready(Some(Err(std::io::Error::other(reason))))
        };
        match self.body.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(BodyChunk::Data(data))) => {
                self.sent += data.len() as u64;
                if self.sent > self.size {
                    let reason = format!("the body outgrew its announced {} bytes", self.size);
                    return failed(&mut self, reason);
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(data))))
            }
            Poll::Ready(Some(BodyChunk::End)) if self.sent == self.size => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(BodyChunk::End)) => {
                let reason = format!("the body ended after {} of {} bytes", self.sent, self.size);
                failed(&mut self, reason)
            }
            Poll::Ready(None) => {
                self.abandoned.store(true, Ordering::SeqCst);
                failed(&mut self, "the writer abandoned the upload".into())
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.size.saturating_sub(self.sent))
    }
}

async fn join_part(parts: &mut JoinSet<Result<CompletedPart, String>>) -> Result<CompletedPart, String> {
    match parts.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(format!("part upload task failed: {join}")),
        None => Err("no part upload in flight".to_string()),
    }
}

fn rfc3339(at: &aws_sdk_s3::primitives::DateTime) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(at.secs())
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn put_stream(&self, name: &str, mut body: BodyReceiver) -> Result<u64, StoreError> {
        let mut upload: Option<String> = None;
        let mut in_flight = JoinSet::new();
        let mut completed = Vec::new();
        let mut number = 0;
        // One part filling while the others upload.
        let mut pool = PartPool::new(self.options.part_size.max(1), self.options.parts_in_flight.max(1) + 1);
        let received = self
            .receive_parts(
                name,
                &mut body,
                &mut pool,
                &mut upload,
                &mut in_flight,
                &mut completed,
                &mut number,
            )
            .await;
        let result = match (received, &upload) {
            // Smaller than one part: a single PutObject.
            (Ok((total, data)), None) => return self.put_single(name, data).await.map(|()| total),
            (Ok((total, last)), Some(upload_id)) => self
                .complete_upload(name, upload_id, last, in_flight, completed, number)
                .await
                .map(|()| total),
            (Err(err), _) => {
                in_flight.abort_all();
                Err(err)
            }
        };
        if let (Err(_), Some(upload_id)) = (&result, &upload) {
            if let Err(abort) = self.abort_upload(&self.key(name), upload_id).await {
                tracing::warn!(
                    "could not abort the multipart upload of {name} ({abort}); `capstan backup prune` retries"
                );
            }
        }
        result
    }

    async fn put_sized_stream(&self, name: &str, size: u64, body: BodyReceiver) -> Result<u64, StoreError> {
        // Small objects: one buffered PutObject, which the SDK can retry.
        if size > self.options.single_put_max || size <= self.options.part_size as u64 {
            return self.put_stream(name, body).await;
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let channel = ChannelBody {
            body,
            size,
            sent: 0,
            done: false,
            abandoned: abandoned.clone(),
        };
        let streamed = SdkByteStream::from_body_1_x(channel);
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .body(streamed)
            .customize()
            // As for parts: the manifest's hashes and age's tags check the content, and a
            // stream cannot be hashed before it is sent.
            .disable_payload_signing()
            // The body waits on etcd, which may pause longer than the SDK's stall grace.
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .stalled_stream_protection(StalledStreamProtectionConfig::disabled()),
            )
            .send()
            .await;
        match sent {
            Ok(_) => Ok(size),
            Err(_) if abandoned.load(Ordering::SeqCst) => Err(StoreError::Abandoned {
                store: self.url(),
                name: name.to_string(),
            }),
            Err(e) => Err(self.error("uploading", name, describe(&e))),
        }
    }

    async fn put_bytes(&self, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.put_single(name, Bytes::from(data)).await
    }

    async fn get_stream(&self, name: &str) -> Result<ByteStream, StoreError> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(service) if service.is_no_such_key() => StoreError::NotFound {
                    store: self.url(),
                    name: name.to_string(),
                },
                _ => self.error("downloading", name, describe(&e)),
            })?;
        let store = self.url();
        let name = name.to_string();
        let stream = futures::stream::try_unfold(response.body, move |mut body| {
            let (store, name) = (store.clone(), name.clone());
            async move {
                match body.try_next().await {
                    Ok(Some(chunk)) => Ok(Some((chunk, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(StoreError::Io {
                        store,
                        operation: "downloading",
                        name,
                        reason: error_chain(&e),
                    }),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_prefix(self.list_prefix())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("listing", "objects", describe(&e)))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    objects.push(ObjectInfo {
                        name: self.name_of(key),
                        size: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        Ok(objects)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map_err(|e| self.error("deleting", name, describe(&e)))?;
        Ok(())
    }

    async fn pending_uploads(&self, cutoff: OffsetDateTime) -> Result<Vec<PendingUpload>, StoreError> {
        let mut found = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_prefix(self.list_prefix())
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| self.error("listing", "multipart uploads", describe(&e)))?;
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let started = upload.initiated();
                let old_enough = started.is_none_or(|at| at.secs() <= cutoff.unix_timestamp());
                if old_enough {
                    found.push(PendingUpload {
                        // The upload id travels with the name: it is needed to abort.
                        name: format!("{}?uploadId={upload_id}", self.name_of(key)),
                        started: started.and_then(rfc3339),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_marker.is_none() {
                break;
            }
        }
        Ok(found)
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        let (name, upload_id) = upload
            .name
            .split_once("?uploadId=")
            .ok_or_else(|| self.error("aborting", &upload.name, "not a multipart upload".into()))?;
        self.abort_upload(&self.key(name), upload_id)
            .await
            .map_err(|e| self.error("aborting multipart upload of", name, e))
    }
}
