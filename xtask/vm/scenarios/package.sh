# tilde installed the way a user installs it: `cargo xtask package` made a Debian package
# of the modules built for this kernel (tilde-modules-<release>); dpkg installs it into
# /lib/modules/<release>/updates/tilde and its postinst runs depmod, so modprobe finds
# tilde's modules and their dependencies (tilde_loopback and tilde_iser bring tilde_core);
# dpkg -r takes every module away and depmod forgets them.
# installs-package
# The Debian 13 path of the README ("Install on Debian 13"). depmod over the stock
# kernel's xz-compressed modules, at install and at removal, takes most of the run under
# TCG (about 4 minutes measured, 2026-12-06).
# test-targets: debian-trixie-6.12
# timeout: 600
. /tilde/guest/lib.sh

release=$(cat /tilde/kernel-release)
package=tilde-modules-$release
dir=/lib/modules/$release/updates/tilde

echo "== nothing of tilde's before"
refute "a tilde module is loaded" grep -q '^tilde' /proc/modules
refute "modinfo knows tilde_core" modinfo tilde_core

echo "== dpkg -i"
dpkg -i /tilde/package/"$package"_*_amd64.deb
dpkg-query -W -f '${Status}\n' "$package" | grep -qx 'install ok installed'
for module in tilde_core tilde_iser tilde_loopback tilde_mlx4 tilde_verbs_conformance; do
	[ -f "$dir/$module.ko" ]
	[ "$(modinfo -F filename "$module")" = "$dir/$module.ko" ]
	[ "$(modinfo -F vermagic "$module" | cut -d' ' -f1)" = "$release" ]
done

echo "== modprobe resolves tilde_core"
ip link add tl0 type dummy
ip link set tl0 up
modprobe tilde_loopback netdev=tl0
grep '^tilde_core ' /proc/modules
grep '^tilde_loopback ' /proc/modules
expect_dmesg 'tilde_loopback: tilde_lo0: registered: RoCE loopback device$'
modprobe tilde_iser
grep '^tilde_iser ' /proc/modules
modprobe -r tilde_iser tilde_loopback
refute "a tilde module is still loaded" grep -q '^tilde' /proc/modules

echo "== dpkg -r"
dpkg -r "$package"
status=$(dpkg-query -W -f '${Status}' "$package" 2>/dev/null || true)
refute "the package is still installed ($status)" [ "$status" = 'install ok installed' ]
[ ! -e "$dir" ]
refute "modinfo still knows tilde_core" modinfo tilde_core
refute "modprobe still finds tilde_core" modprobe tilde_core
