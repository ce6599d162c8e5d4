"""Archives in object storage: an S3 store, the upload queue's pure core, and its driver.

* :mod:`earshot.storage.objects.s3` — :class:`S3ObjectStore` (``s3://BUCKET/PREFIX`` plus
  the AWS_* variables): a start-up check, verified uploads (multipart for large files),
  ranged reads, deletes. Needs ``pip install 'earshot[s3]'`` (boto3), imported on use.
* :mod:`earshot.storage.objects.queue` — :class:`UploadQueue`: pure (time passed in),
  retries with exponential backoff, the backlog for /healthz and /metrics.
* :mod:`earshot.storage.objects.uploader` — :class:`Uploader`: the queue run from an
  asyncio loop, uploads in threads of their own; never blocks the caller.
"""

from earshot.storage.objects.queue import Backoff, UploadJob, UploadQueue
from earshot.storage.objects.s3 import (
    ObjectStoreError,
    S3Config,
    S3ObjectStore,
    StoreLocation,
    UploadResult,
    parse_store_url,
)
from earshot.storage.objects.uploader import Uploader

__all__ = ["Backoff", "ObjectStoreError", "S3Config", "S3ObjectStore", "StoreLocation",
           "UploadJob", "UploadQueue", "UploadResult", "Uploader", "parse_store_url"]
