# The paas host image: Debian 12 + nginx + HAProxy + the project, booting into a machine or
# frontend agent (or the registry) configured from EC2 user data. See ami/README.md.
#
# Valid for Debian 12's Packer (1.6.6) and for current Packer. That is why there is no
# `packer { required_plugins { ... } }` block (1.6 cannot parse it): with Packer >= 1.10 run
# `packer plugins install github.com/hashicorp/amazon` once instead. For the same reason the
# template sets no IMDS options (`metadata_options`, `imds_support` are newer than 1.6): ask
# for IMDSv2 when launching (`--metadata-options HttpTokens=required`, see the README).

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "AWS region to build in; the image is registered there."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Build instance type. Its architecture must match the wheels (x86_64 by default)."
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "Debian architecture of the source image: amd64, or arm64 with Graviton types."
  validation {
    condition     = contains(["amd64", "arm64"], var.arch)
    error_message = "The arch must be amd64 or arm64."
  }
}

variable "role" {
  type        = string
  default     = "machine"
  description = "The image's default role (user data may override it): machine, frontend or registry."
  validation {
    condition     = contains(["machine", "frontend", "registry"], var.role)
    error_message = "The role must be machine, frontend or registry."
  }
}

variable "project_version" {
  type        = string
  default     = "0.1.0"
  description = "The paas version in ami/wheels/ (provisioning refuses a different wheel)."
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12"
  description = "Name prefix of the official Debian 12 images (owner 136693071363): debian-12-<arch>-<date>."
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "debian12" {
  region          = var.region
  instance_type   = var.instance_type
  ssh_username    = "admin"
  ami_name        = "paas-${var.role}-${var.project_version}-${var.arch}-${local.stamp}"
  ami_description = "paas ${var.project_version} host image (${var.role}) on Debian 12"

  source_ami_filter {
    filters = {
      name                = "${var.source_ami_name}-${var.arch}-*"
      architecture        = var.arch == "amd64" ? "x86_64" : "arm64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["136693071363"]
    most_recent = true
  }

  tags = {
    Name              = "paas-${var.role}-${var.project_version}"
    "paas:role"       = var.role
    "paas:version"    = var.project_version
    "paas:source-ami" = "{{ .SourceAMI }}"
  }
}

build {
  sources = ["source.amazon-ebs.debian12"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/paas-upload"]
  }

  provisioner "file" {
    source      = "${path.root}/files"
    destination = "/tmp/paas-upload"
  }

  provisioner "file" {
    source      = "${path.root}/wheels"
    destination = "/tmp/paas-upload"
  }

  provisioner "file" {
    source      = "${path.root}/README.md"
    destination = "/tmp/paas-upload/README.md"
  }

  provisioner "shell" {
    script          = "${path.root}/provision.sh"
    execute_command = "sudo env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = [
      "PAAS_UPLOAD=/tmp/paas-upload",
      "PAAS_ROLE=${var.role}",
      "PAAS_VERSION=${var.project_version}",
      "PAAS_APT_UPDATE=always",
    ]
  }

  provisioner "shell" {
    inline = ["sudo rm -rf /tmp/paas-upload"]
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
  }
}
