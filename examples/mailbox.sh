#!/bin/bash
# The demo customer's inbox: the Maildir the local SMTP server (aiosmtpd)
# writes what crmguard-relay delivers.
#   mailbox.sh show SUBJECT [N]   wait for the Nth mail with that subject (1), print the newest
#   mailbox.sh code SUBJECT [N]   the code in it
set -euo pipefail
dir=${CRMGUARD_DEMO_MAILDIR:?the demo sets CRMGUARD_DEMO_MAILDIR}
what=$1 subject=$2 n=${3:-1}
matching() { grep -l "^Subject: $subject" "$dir"/new/* 2>/dev/null || true; }
newest() { matching | xargs -r ls -t | head -n 1; }
for _ in $(seq 1 100); do
    [ "$(matching | wc -l)" -ge "$n" ] && break
    sleep 0.1
done
mail=$(newest)
[ -n "$mail" ] || { echo "   (no mail with subject \"$subject\" arrived)"; exit 1; }
case $what in
show)
    sed -n -e 's/^\(From\|To\|Subject\|Message-ID\): /   \1: /p' -e '/^\r\?$/q' "$mail"
    echo '   |'
    sed -e '1,/^\r\?$/d' -e 's/\r$//' -e 's/^/   | /' "$mail"
    ;;
code)
    sed -n 's/.*your code is \([A-Za-z0-9]*\).*/\1/p' "$mail" | head -n 1
    ;;
esac
