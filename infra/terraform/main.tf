# The bucket of an i2score deployment (latent cache, manifests and runs) and the policy that
# lets the workers use it. Offline check: terraform init -backend=false -plugin-dir=<mirror>;
# terraform validate.
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "bucket_name" {
  type        = string
  description = "Bucket holding cache/, runs/ and manifests/ (the flows' --root is s3://<bucket>/<prefix>)."
}

variable "worker_role_names" {
  type        = list(string)
  default     = []
  description = "IAM roles of the GPU workers (and of anyone submitting runs) that get the access policy."
}

variable "run_retention_days" {
  type        = number
  default     = 90
  description = "Days after which run outputs (runs/) expire; the latent cache (cache/) is kept."
}

resource "aws_s3_bucket" "data" {
  bucket = var.bucket_name
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    id     = "expire-runs"
    status = "Enabled"
    filter {
      prefix = "runs/"
    }
    expiration {
      days = var.run_retention_days
    }
  }
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
}

# TLS only: credentials and images never travel in clear text.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.bucket.json
}

# What a worker does: list, read, write and (cache compaction) delete objects; nothing else.
data "aws_iam_policy_document" "workers" {
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.data.arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.data.arn}/*"]
  }
}

resource "aws_iam_policy" "workers" {
  name        = "${var.bucket_name}-i2score-workers"
  description = "i2score workers: read and write the data bucket"
  policy      = data.aws_iam_policy_document.workers.json
}

resource "aws_iam_role_policy_attachment" "workers" {
  for_each   = toset(var.worker_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.workers.arn
}

output "bucket" {
  value = aws_s3_bucket.data.bucket
}

output "root_url" {
  value = "s3://${aws_s3_bucket.data.bucket}/i2score"
}

output "worker_policy_arn" {
  value = aws_iam_policy.workers.arn
}
