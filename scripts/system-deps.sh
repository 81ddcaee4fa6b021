#!/usr/bin/env bash
# Debian packages tuwen needs beyond Python: the CJK font the fixture site draws Chinese text with,
# libjpeg-turbo's TurboJPEG library, PostgreSQL when no server is installed, Redis, and Chromium for the
# browser tests. Installs them when run as root; otherwise says how.
set -euo pipefail

need=()
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
# libjpeg-turbo's TurboJPEG API: the crawler's planar JPEG decode and encode (PyTurboJPEG loads it).
compgen -G '/usr/lib/*/libturbojpeg.so.0' >/dev/null || compgen -G '/usr/lib/libturbojpeg.so.0' >/dev/null \
  || need+=(libturbojpeg0)
command -v pg_ctlcluster >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || need+=(postgresql)
# Redis: the Celery broker of `make up --executor celery` and the Celery tests.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Headless Chromium + ChromeDriver: the browser checks of the QC report and the Airflow UI.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "tuwen needs these Debian packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
