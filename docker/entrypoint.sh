#!/bin/sh
# The tsgi image's entrypoint: writes one VirtualHost per mounted app
# (docker/tsgi-vhosts.sh), then becomes Apache in the foreground.
#
# `apache2ctl -D FOREGROUND` reads Debian's /etc/apache2/envvars and creates the run and
# lock directories, but Debian's apache2ctl runs apache2 as its child: a shell would stay
# PID 1 and swallow `docker stop`'s signal. With APACHE_HTTPD="exec /usr/sbin/apache2",
# apache2ctl's last line execs instead, so apache2 itself is PID 1 and gets SIGWINCH
# (graceful stop, the image's STOPSIGNAL), SIGTERM (stop) and SIGUSR1 (graceful restart)
# directly, and reaps its children. Extra arguments go to apache2 (e.g. `-e debug`).
set -eu
"$(dirname "$0")/tsgi-vhosts.sh"
APACHE_HTTPD="${APACHE_HTTPD:-exec /usr/sbin/apache2}"
export APACHE_HTTPD
exec apache2ctl -D FOREGROUND "$@"
