#!/bin/bash
# Install the Debian packages crmguard builds and tests with, when missing.
set -euo pipefail

packages="postgresql-15 postgresql-common postgresql-server-dev-15 libsodium-dev
postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl libipc-run-perl
build-essential pgbouncer postgresql-15-pgaudit python3-psycopg2 openssl
libpq-dev libcurl4-openssl-dev python3-aiosmtpd"

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "crmguard: installing$missing"
echo "crmguard: (apt-get update and install; this takes a minute on a fresh machine)"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
