"""The file service: resumable multipart uploads, sha256 deduplication and presigned downloads."""
