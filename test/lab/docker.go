package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vxnet/vxnet/internal/nstest"
)

// RegistryAddr is where the lab's image registry (Debian's docker-registry)
// listens: plugins are pushed there and installed from there, as a user would.
const RegistryAddr = "192.0.2.3:5000"

// DockerCLI is Debian's docker client, matching the lab's default dockerd
// 20.10 (Docker20).
const DockerCLI = "/usr/bin/docker"

// Daemon is a real dockerd on a simulated host: in the host's network
// namespace, with a mount namespace of its own holding a private /run (so
// /run/docker/plugins and /run/vxnet are per host, as on real machines), a
// host name of its own (the host's name), and its own data-root, exec-root
// and API socket (Sock, for the tests). As on a host with Docker's
// defaults, the host's /run also holds dockerd's socket (docker.sock) and
// its containers' namespaces (docker/netns, a shared bind of the
// exec-root's netns): the plugin reads services and programs VIPs there.
type Daemon struct {
	Host    *Host
	Dir     string
	Sock    string
	Version DockerVersion // the release it runs
	cmd     *exec.Cmd
}

// Swarm is a lab whose hosts run dockerd in one swarm.
type Swarm struct {
	*Lab
	Daemons  []*Daemon
	Managers int
	Version  DockerVersion // the release every daemon runs
	registry *exec.Cmd
}

// DaemonStartTimeout is how long a dockerd may take to answer after it
// is started. Emulated (the benchmark under qemu) it takes minutes.
var DaemonStartTimeout = 60 * time.Second

// DockerAvailable reports what the Docker lab lacks on this machine, if anything.
func DockerAvailable() error {
	for _, bin := range []string{"dockerd", DockerCLI, "docker-registry", "busybox", "unshare", "nsenter", "tar"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("needs %s (make setup)", bin)
		}
	}
	return nil
}

// NewSwarm starts a registry and a dockerd on each of the lab's hosts,
// joins them into a swarm with managers managers (0: no swarm, plain
// Docker hosts), and imports a busybox image on each. The daemons run the
// machine's own Docker, 20.10.
func NewSwarm(l *Lab, managers int) *Swarm {
	l.t.Helper()
	return NewSwarmWith(l, managers, Docker20)
}

// NewSwarmWith is NewSwarm with the daemons of Docker release v; the
// caller checks v.Available first.
func NewSwarmWith(l *Lab, managers int, v DockerVersion) *Swarm {
	t := l.t
	t.Helper()
	s := &Swarm{Lab: l, Managers: managers, Version: v}
	s.startRegistry()
	image := s.busyboxTar()
	var wg sync.WaitGroup
	for _, h := range l.Hosts {
		d := &Daemon{Host: h, Dir: filepath.Join(l.dir, h.Name, "docker"), Version: v}
		d.Sock = filepath.Join(d.Dir, "docker.sock")
		s.Daemons = append(s.Daemons, d)
		d.start(t)
	}
	for _, d := range s.Daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.waitUp(t)
			d.mustDocker(t, "import", "-c", `CMD ["sh"]`, image, "busybox:latest")
		}()
	}
	wg.Wait()
	if managers > 0 {
		s.formSwarm()
	}
	return s
}

func (s *Swarm) startRegistry() {
	t := s.t
	ns := nstest.New(t, "reg")
	s.underlay.Plug(t, ns, "eth0", strings.Split(RegistryAddr, ":")[0], 0)
	dir := filepath.Join(s.dir, "registry")
	os.MkdirAll(dir, 0o755)
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", dir, RegistryAddr)), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "registry.log"))
	s.registry = exec.Command("nsenter", "--net="+ns.Path(), "docker-registry", "serve", cfg)
	s.registry.Stdout, s.registry.Stderr = logf, logf
	if err := s.registry.Start(); err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(func() { stopProcess(s.registry, 5*time.Second); logf.Close() })
}

// busyboxTar makes a root filesystem of Debian's static busybox, for
// `docker import`: there is no registry to pull images from.
func (s *Swarm) busyboxTar() string {
	t := s.t
	root := filepath.Join(s.dir, "busybox")
	bin := filepath.Join(root, "bin")
	for _, d := range []string{bin, filepath.Join(root, "etc"), filepath.Join(root, "tmp"), filepath.Join(root, "proc"), filepath.Join(root, "sys"), filepath.Join(root, "dev")} {
		os.MkdirAll(d, 0o755)
	}
	bb, _ := exec.LookPath("busybox")
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatalf("read busybox: %v", err)
	}
	os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755)
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			os.Symlink("busybox", filepath.Join(bin, applet))
		}
	}
	out := filepath.Join(s.dir, "busybox.tar")
	if b, err := exec.Command("tar", "-C", root, "-cf", out, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar busybox: %v %s", err, b)
	}
	return out
}

func (d *Daemon) start(t nstest.T) {
	t.Helper()
	cg := filepath.Join(d.Dir, "cgroup")
	for _, p := range []string{cg, filepath.Join(d.Dir, "data"), filepath.Join(d.Dir, "exec")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatalf("%v", err)
		}
	}
	// A fresh sysfs shows the host namespace's devices; the cgroup tree
	// must be bound back or dockerd fails ("Devices cgroup isn't mounted").
	// A later release then moves into its rootfs.
	//
	// Swarm's agent tries to pull a task's image before it uses the one
	// imported here, and the lab has no way out: every task would spend
	// 20 s in Preparing on DNS timeouts (DOCKER_SERVICE_PREFER_OFFLINE_IMAGE
	// skips the pull, moby's daemon/cluster/executor/container).
	script := fmt.Sprintf(`set -e
hostname %[5]s
export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1
mount --rbind /sys/fs/cgroup %[1]s
mount -t sysfs sysfs /sys
mount --rbind %[1]s /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /run
mount --make-shared /run
mkdir -p /run/docker/plugins /run/docker/netns %[2]s/exec/netns
mount --bind %[2]s/exec/netns %[2]s/exec/netns
mount --make-shared %[2]s/exec/netns
mount --bind %[2]s/exec/netns /run/docker/netns
%[6]sexec dockerd --data-root %[2]s/data --exec-root %[2]s/exec -H unix://%[3]s -H unix:///run/docker.sock --pidfile %[2]s/docker.pid \
  --bip 198.19.0.1/24 --default-address-pool base=198.19.0.0/16,size=24 \
  --insecure-registry %[4]s --log-level info
`, cg, d.Dir, d.Sock, RegistryAddr, d.Host.Name, d.Version.pivotScript(d.Dir, d.Dir+"-root"))
	logf, err := os.Create(filepath.Join(d.Dir, "dockerd.log"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	d.cmd = exec.Command("unshare", "--mount", "--uts", "--propagation", "private", "nsenter", "--net="+d.Host.NS.Path(), "sh", "-c", script)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dockerd on %s: %v", d.Host.Name, err)
	}
	t.Cleanup(func() {
		d.stop()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("dockerd log of %s (last lines):\n%s", d.Host.Name, tail(string(b), 40))
		}
	})
}

func (d *Daemon) waitUp(t nstest.T) {
	t.Helper()
	deadline := time.Now().Add(DaemonStartTimeout)
	for {
		if _, err := d.Docker("version", "--format", "{{.Server.Version}}"); err == nil {
			return
		}
		if d.cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
			t.Fatalf("dockerd on %s did not come up:\n%s", d.Host.Name, tail(string(b), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop removes every container and service, then stops dockerd (it stops
// its plugins and containerd), then ends any process of this daemon left.
func (d *Daemon) stop() {
	if d.cmd == nil || d.cmd.ProcessState != nil {
		return
	}
	if ids, err := d.Docker("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		d.Docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	stopProcess(d.cmd, 30*time.Second)
	killDescendantsOf(d.Dir)
}

// Docker runs the docker CLI of d's release against d.
func (d *Daemon) Docker(args ...string) (string, error) {
	cli := d.Version.cli()
	cmd := exec.Command(cli[0], append(append(cli[1:], "-H", "unix://"+d.Sock), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("docker %s on %s: %w: %s", strings.Join(args, " "), d.Host.Name, err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func (d *Daemon) mustDocker(t nstest.T, args ...string) string {
	t.Helper()
	out, err := d.Docker(args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// Log is what dockerd has logged so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
	return string(b)
}

// PluginPaths are where an operator on d's host finds the vxnet binary of
// managed plugin ref (in its rootfs, under --data-root, by default
// /var/lib/docker) and its socket (Docker 20.10, 26.1 and 28.5 put it in
// /run/docker/plugins/ID/ whatever --exec-root says).
func (d *Daemon) PluginPaths(ref string) (bin, socket string, err error) {
	id, err := d.Docker("plugin", "inspect", "-f", "{{.Id}}", ref)
	if err != nil {
		return "", "", err
	}
	return filepath.Join(d.Dir, "data", "plugins", id, "rootfs", "vxnet"), filepath.Join("/run/docker/plugins", id, "vxnet.sock"), nil
}

// PluginPid finds the process of the vxnet plugin running on d's host: the
// one in the host's network namespace (the plugin uses host networking).
func (d *Daemon) PluginPid() (int, error) {
	var host syscall.Stat_t
	if err := syscall.Stat(d.Host.NS.Path(), &host); err != nil {
		return 0, err
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !bytes.Equal(cmdline, []byte("/vxnet\x00plugin\x00")) {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil && st.Ino == host.Ino {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no vxnet plugin process on %s", d.Host.Name)
}

// Pid is dockerd's process ID: its mount namespace holds the host's /run.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// InNetwork runs a command in the namespace vxnet pinned for network nid
// on d's host (under the host's /run/vxnet, seen through dockerd's mount
// namespace).
func (d *Daemon) InNetwork(nid string, args ...string) (string, error) {
	return d.InHostMounts(append([]string{"nsenter", "--net=/run/vxnet/netns/" + nid}, args...)...)
}

// InHostMounts runs a command with the host's mounts (dockerd's mount
// namespace) and network namespace. The command is the machine's, also for
// a daemon in a rootfs (it runs chroot'ed to the machine's root, which
// holds the daemon's /run and directory as the rootfs does).
func (d *Daemon) InHostMounts(args ...string) (string, error) {
	full := []string{"-t", strconv.Itoa(d.Pid()), "-m", "-n"}
	if d.Version.Rootfs() != "" {
		full = append(full, "chroot", hostRoot)
	}
	full = append(full, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

// ContainerPid is the PID of a running container's process.
func (d *Daemon) ContainerPid(name string) (int, error) {
	out, err := d.Docker("inspect", "-f", "{{.State.Pid}}", name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(out)
}

// InContainerNet runs a host tool (ping, iperf3) in a container's network
// namespace: busybox lacks them or their options.
func (d *Daemon) InContainerNet(name string, args ...string) (string, error) {
	pid, err := d.ContainerPid(name)
	if err != nil {
		return "", err
	}
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput()
	return string(out), err
}

func (s *Swarm) formSwarm() {
	t := s.t
	m := s.Daemons[0]
	// Where hosts have a data link, the stock overlay uses it too
	// (--data-path-addr), as vxnet does with VXNET_DATA_ADDR.
	dataPath := func(h *Host) []string {
		if h.DataAddr == "" {
			return nil
		}
		return []string{"--data-path-addr", h.DataAddr}
	}
	m.mustDocker(t, append([]string{"swarm", "init", "--advertise-addr", m.Host.Addr, "--listen-addr", m.Host.Addr + ":2377",
		"--default-addr-pool", "198.18.128.0/17", "--default-addr-pool-mask-length", "24"}, dataPath(m.Host)...)...)
	mtok := m.mustDocker(t, "swarm", "join-token", "-q", "manager")
	wtok := m.mustDocker(t, "swarm", "join-token", "-q", "worker")
	for i, d := range s.Daemons[1:] {
		tok := wtok
		if i+1 < s.Managers {
			tok = mtok
		}
		d.mustDocker(t, append(append([]string{"swarm", "join", "--token", tok, "--advertise-addr", d.Host.Addr, "--listen-addr", d.Host.Addr + ":2377"},
			dataPath(d.Host)...), m.Host.Addr+":2377")...)
	}
}

// InstallPlugin does what an operator does: build the plugin directory
// (pluginDir, from `make plugin`), create and push it to the registry from
// the first host, then `docker plugin install` it from the registry on
// every host with settings, and enable it. It returns the driver name.
func (s *Swarm) InstallPlugin(pluginDir, tag string, settings func(h *Host) []string) string {
	t := s.t
	t.Helper()
	ref := RegistryAddr + "/vxnet:" + tag
	first := s.Daemons[0]
	first.mustDocker(t, "plugin", "create", ref, pluginDir)
	first.mustDocker(t, "plugin", "push", ref)
	first.mustDocker(t, "plugin", "rm", ref)
	var wg sync.WaitGroup
	for _, d := range s.Daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := []string{"plugin", "install", "--grant-all-permissions", ref,
				"VXNET_ETCD_ENDPOINTS=" + s.Etcd.Endpoint}
			if settings != nil {
				args = append(args, settings(d.Host)...)
			}
			d.mustDocker(t, args...)
		}()
	}
	wg.Wait()
	return ref
}

// WaitPluginReported waits until the swarm's manager lists network plugin
// ref on every node. A node reports a new plugin to the managers some
// seconds after the install (about 18 s with dockerd 20.10), and until
// then swarm places no task of a service on its network there.
func (s *Swarm) WaitPluginReported(ref string) {
	t := s.t
	t.Helper()
	m := s.Daemons[0]
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := m.Docker("node", "ls", "-q")
		if err == nil {
			out, err = m.Docker(append([]string{"node", "inspect", "-f",
				`{{range .Description.Engine.Plugins}}{{if eq .Type "Network"}}{{.Name}} {{end}}{{end}}`}, strings.Fields(out)...)...)
		}
		lines := strings.Split(out, "\n")
		reported := 0
		for _, l := range lines {
			if slices.Contains(strings.Fields(l), ref) {
				reported++
			}
		}
		if err == nil && reported == len(s.Daemons) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("swarm lists plugin %s on %d of %d nodes after 60 s: %v\n%s", ref, reported, len(s.Daemons), err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stopProcess sends SIGTERM, then SIGKILL after grace.
func stopProcess(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-done
	}
}

// killDescendantsOf ends processes a daemon started that outlived it
// (container shims), found by the daemon's directory on their command line.
func killDescendantsOf(dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
