#!/bin/sh
# The container image's contents, from a built binary: the one definition of what the final
# image holds, used by the Dockerfile (on the binary its builder stage compiled) and by CI (on
# the binary CI compiled, where no base image can be pulled). The Dockerfile's last stage adds
# only the runtime contract (user, state volume, environment, entrypoint).
#
#   deploy/container/rootfs.sh BINARY OUT
#
# OUT/rootfs gets: the binary without its debug info (function names stay, for backtraces);
# the shared libraries `ldd` names (glibc, libm, libgcc_s, the dynamic loader) — glibc 2.34+
# has its files and dns NSS modules built in, so DNS needs only the /etc/resolv.conf and
# /etc/hosts the runtime mounts; /etc/passwd and /etc/group with the runtime user 65532
# (`nonroot`); /etc/nsswitch.conf. No CA bundle: TLS is rustls with the webpki-roots crate,
# Mozilla's roots compiled into the binary. OUT/state is the empty state directory, which the
# Dockerfile copies to /var/lib/zt-janitor owned by the runtime user.
set -eu
bin=$1
root=$2/rootfs

install -d -m 0755 "$root/usr/local/bin" "$root/etc" "$root/var/lib"
strip --strip-debug -o "$root/usr/local/bin/zt-janitor" "$bin"
chmod 0755 "$root/usr/local/bin/zt-janitor"
# `ldd` prints `name => /path (addr)` and the loader as `/path (addr)`; vdso has no file.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/zt-janitor:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
install -d -m 0700 "$2/state"
