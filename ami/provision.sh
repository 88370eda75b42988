#!/usr/bin/env bash
# Provision a Debian 12 host for paas: Packer runs it on the build instance (as root), the
# tests run it in a debootstrapped root (chroot). Idempotent: a second run changes nothing
# that is already right and repairs what is not.
#
# Inputs (environment):
#   PAAS_UPLOAD      folder with files/ (ami/files) and wheels/ (ami/build-wheels.sh output)
#                    [/tmp/paas-upload]
#   PAAS_ROLE        the image's default role: machine | frontend | registry [machine]
#   PAAS_VERSION     the project version to install; must match the wheel [any]
#   PAAS_APT_UPDATE  always | auto (only when apt has no package lists) [auto]
set -euo pipefail

UPLOAD=${PAAS_UPLOAD:-/tmp/paas-upload}
ROLE=${PAAS_ROLE:-machine}
VERSION=${PAAS_VERSION:-}
APT_UPDATE=${PAAS_APT_UPDATE:-auto}
APT_PACKAGES="nginx haproxy python3 python3-venv logrotate ca-certificates"
VENV=/opt/paas/venv
APP_USER=paas-app
REGISTRY_USER=paas-registry
UNITS="paas-firstboot.service paas-agent@machine.service paas-agent@frontend.service paas-registry.service"

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
case "$ROLE" in machine | frontend | registry) ;; *) die "PAAS_ROLE=$ROLE: use machine, frontend or registry" ;; esac
case "$APT_UPDATE" in always | auto) ;; *) die "PAAS_APT_UPDATE=$APT_UPDATE: use always or auto" ;; esac
[ -d "$UPLOAD/files" ] || die "$UPLOAD/files is missing (upload ami/files there)"
shopt -s nullglob
wheels=("$UPLOAD"/wheels/paas-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || die "expected exactly one paas-*.whl in $UPLOAD/wheels (run ami/build-wheels.sh), found ${#wheels[@]}"
WHEEL=${wheels[0]}
wheel_version=$(basename "$WHEEL" | cut -d- -f2)
if [ -n "$VERSION" ] && [ "$VERSION" != "$wheel_version" ]; then
    die "PAAS_VERSION=$VERSION but the wheel is $(basename "$WHEEL")"
fi
systemd_running() { [ -d /run/systemd/system ]; }

# ---- Debian packages ----------------------------------------------------------------------
missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ] || [ "$APT_UPDATE" = always ]; then
    export DEBIAN_FRONTEND=noninteractive
    # The agents run their own nginx and HAProxy: the packages' services must never start,
    # not even for a moment during the install (they would take port 80).
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    if [ "$APT_UPDATE" = always ] || ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
        say "apt-get update"
        apt-get update -q
    fi
    if [ "$APT_UPDATE" = always ]; then
        say "apt-get upgrade (security fixes newer than the source image)"
        apt-get upgrade -y -q -o Dpkg::Options::=--force-confold
    fi
    if [ -n "$missing" ]; then
        say "installing:$missing"
        # shellcheck disable=SC2086  # word splitting of the package list is intended
        apt-get install -y -q --no-install-recommends $missing
    fi
    apt-get clean
else
    say "Debian packages already installed"
fi
for unit in nginx.service haproxy.service; do
    if [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" != masked ]; then
        if systemd_running; then systemctl stop "$unit" || true; fi
        systemctl disable "$unit" >/dev/null 2>&1 || true
        systemctl mask "$unit" >/dev/null
        say "masked $unit (the agents run their own)"
    fi
done

# ---- users ----------------------------------------------------------------------------------
for user in "$APP_USER" "$REGISTRY_USER"; do
    if ! getent passwd "$user" >/dev/null; then
        useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "paas ${user#paas-}" "$user"
        say "created system user $user"
    fi
done

# ---- the project, from the uploaded wheels (no index: exactly what was built) --------------
install -d -m 0755 -o root -g root /opt/paas
# Only the uploaded wheels count: no pip configuration of the build machine may add an index.
for var in $(compgen -e); do case "$var" in PIP_*) unset "$var" ;; esac; done
export PIP_CONFIG_FILE=/dev/null
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$UPLOAD/wheels" "$WHEEL"
# Same version, new build (a rebuilt checkout): reinstall the project itself, not its deps.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --force-reinstall "$WHEEL"
"$VENV/bin/paas-agent" --help >/dev/null
"$VENV/bin/paas-registry" --help >/dev/null
say "installed $(basename "$WHEEL") into $VENV"

# ---- folders: state, logs, cache, settings ----------------------------------------------------
install -d -m 0755 -o root -g root /etc/paas
install -d -m 0751 -o root -g root /var/lib/paas
# Apps (as paas-app) read their release and venv below the machine state; nothing else.
install -d -m 0750 -o root -g "$APP_USER" /var/lib/paas/machine
install -d -m 0700 -o root -g root /var/lib/paas/frontend
install -d -m 0700 -o "$REGISTRY_USER" -g "$REGISTRY_USER" /var/lib/paas/registry
install -d -m 0750 -o root -g adm /var/log/paas /var/log/paas/machine
install -d -m 0700 -o root -g root /var/cache/paas /var/cache/paas/machine /var/cache/paas/frontend
# App logs go to /var/log/paas/machine/<app>/ (rotated there); the agent writes state/logs.
logs=/var/lib/paas/machine/logs
if [ -d "$logs" ] && [ ! -L "$logs" ]; then
    cp -a "$logs/." /var/log/paas/machine/
    rm -rf "$logs"
fi
ln -sfn /var/log/paas/machine "$logs"
printf '# The image defaults; the user data overrides the role.\nrole = "%s"\nversion = "%s"\n' \
    "$ROLE" "$wheel_version" >/etc/paas/image.toml
chmod 0644 /etc/paas/image.toml

# ---- programs, units, log rotation ------------------------------------------------------------
install -m 0755 "$UPLOAD/files/paas_firstboot.py" /usr/local/sbin/paas-firstboot
install -m 0755 "$UPLOAD/files/paas-agent-stop-post" /usr/local/sbin/paas-agent-stop-post
for unit in "$UPLOAD"/files/systemd/*.service; do
    install -m 0644 "$unit" "/etc/systemd/system/$(basename "$unit")"
done
# Drop-ins (paas-agent@machine.service.d/): what one instance of a template adds.
for dropins in "$UPLOAD"/files/systemd/*.service.d; do
    [ -d "$dropins" ] || continue
    target="/etc/systemd/system/$(basename "$dropins")"
    install -d -m 0755 "$target"
    for conf in "$dropins"/*.conf; do install -m 0644 "$conf" "$target/$(basename "$conf")"; done
done
install -m 0644 "$UPLOAD/files/logrotate-paas" /etc/logrotate.d/paas
if [ -f "$UPLOAD/README.md" ]; then install -m 0644 "$UPLOAD/README.md" /opt/paas/README.md; fi
if systemd_running; then systemctl daemon-reload; fi
# shellcheck disable=SC2086
systemctl enable $UNITS >/dev/null 2>&1
say "enabled $UNITS"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /etc/systemd/system/paas-firstboot.service \
        /etc/systemd/system/paas-registry.service \
        /etc/systemd/system/paas-agent@machine.service \
        /etc/systemd/system/paas-agent@frontend.service
fi
say "done: role $ROLE, paas $wheel_version"
