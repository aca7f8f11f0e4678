// Package hack_test tests the scripts in hack/ that developers and CI run.
package hack_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var envtestBinaries = []string{"etcd", "kube-apiserver", "kubectl"}

// TestEnvtestScript runs hack/envtest.sh against a setup-envtest release
// served on loopback. The source build is replaced by a stand-in
// (ENVTEST_SOURCE_BUILD_CMD) that writes binaries of its own, so what ends
// up in the assets directory shows which path the script took.
func TestEnvtestScript(t *testing.T) {
	version := envtestVersion(t)
	platform := releasePlatform(t)
	file := "envtest-" + version + "-" + platform + ".tar.gz"
	good := releaseTarball(t, map[string]string{
		"controller-tools/envtest/etcd":           "downloaded etcd",
		"controller-tools/envtest/kube-apiserver": "downloaded kube-apiserver",
		"controller-tools/envtest/kubectl":        "downloaded kubectl",
	})
	noLayout := releaseTarball(t, map[string]string{"kube-apiserver": "downloaded kube-apiserver"})
	sum := func(b []byte) string { s := sha512.Sum512(b); return hex.EncodeToString(s[:]) }

	for _, tc := range []struct {
		name        string
		served      []byte
		pinned      string // the checksums file's line for file; empty for none
		unreachable bool
		noDownload  bool
		// want is where the binaries come from: "downloaded" or "source".
		want        string
		wantRequest bool
		wantOutput  string
	}{{
		name: "pinned and verified: installed from the download", served: good, pinned: sum(good) + "  " + file,
		want: "downloaded", wantRequest: true, wantOutput: "Installed the setup-envtest binaries " + version + " (SHA-512 verified)",
	}, {
		name: "checksum mismatch: refused, built from source", served: good, pinned: sum([]byte("another file")) + "  " + file,
		want: "source", wantRequest: true, wantOutput: "checksum mismatch for " + file,
	}, {
		name: "not pinned: not downloaded, built from source", served: good, pinned: "",
		want: "source", wantRequest: false, wantOutput: "no SHA-512 of " + file + " pinned",
	}, {
		name: "pinned for another file only: not downloaded", served: good, pinned: sum(good) + "  envtest-" + version + "-plan9-mips.tar.gz",
		want: "source", wantRequest: false, wantOutput: "no SHA-512 of " + file + " pinned",
	}, {
		name: "unreachable: built from source", unreachable: true, pinned: sum(good) + "  " + file,
		want: "source", wantOutput: "download failed",
	}, {
		name: "not found: built from source", served: nil, pinned: sum(good) + "  " + file,
		want: "source", wantRequest: true, wantOutput: "download failed",
	}, {
		name: "verified but not the release layout: built from source", served: noLayout, pinned: sum(noLayout) + "  " + file,
		want: "source", wantRequest: true, wantOutput: file + " has no controller-tools/envtest/etcd",
	}, {
		name: "ENVTEST_DOWNLOAD=false: built from source", served: good, pinned: sum(good) + "  " + file, noDownload: true,
		want: "source", wantRequest: false, wantOutput: "ENVTEST_DOWNLOAD=false",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				if tc.served == nil || r.URL.Path != "/envtest-"+version+"/"+file {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write(tc.served)
			}))
			defer srv.Close()
			url := srv.URL
			if tc.unreachable {
				url = closedPortURL(t)
			}

			dir := t.TempDir()
			checksums := filepath.Join(dir, "checksums.sha512")
			writeFile(t, checksums, "# pins for this test\n"+tc.pinned+"\n")
			assets := filepath.Join(dir, "k8s")
			out := runEnvtestScript(t, assets, url, checksums, tc.noDownload)

			if !strings.Contains(out, tc.wantOutput) {
				t.Errorf("output does not say %q:\n%s", tc.wantOutput, out)
			}
			pathTaken := map[string]string{"downloaded": "Installed the setup-envtest binaries", "source": "building from source"}[tc.want]
			if !strings.Contains(out, pathTaken) {
				t.Errorf("output does not say which path it took (%q):\n%s", pathTaken, out)
			}
			for _, bin := range envtestBinaries {
				path := filepath.Join(assets, bin)
				if got := readFile(t, path); got != tc.want+" "+bin {
					t.Errorf("%s is %q, want the %s one", bin, got, tc.want)
				}
				if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o100 == 0 {
					t.Errorf("%s is not executable: %v %v", bin, fi.Mode(), err)
				}
			}
			if got := readFile(t, filepath.Join(assets, ".built-"+version)); got != tc.want+"\n" {
				t.Errorf("stamp says %q, want %q", got, tc.want)
			}
			if got := requests.Load() > 0; got != tc.wantRequest {
				t.Errorf("download requested: %v, want %v", got, tc.wantRequest)
			}
		})
	}
}

// TestEnvtestScriptKeepsInstalledBinaries: with the binaries and the stamp
// in place (every run after the first), the script neither downloads nor
// builds nor prints anything.
func TestEnvtestScriptKeepsInstalledBinaries(t *testing.T) {
	version := envtestVersion(t)
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.NotFound(w, r)
	}))
	defer srv.Close()
	dir := t.TempDir()
	assets := filepath.Join(dir, "k8s")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, bin := range envtestBinaries {
		if err := os.WriteFile(filepath.Join(assets, bin), []byte("installed "+bin), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(assets, ".built-"+version), "")
	checksums := filepath.Join(dir, "checksums.sha512")
	writeFile(t, checksums, "")

	if out := runEnvtestScript(t, assets, srv.URL, checksums, false); out != "" {
		t.Errorf("output %q, want none", out)
	}
	for _, bin := range envtestBinaries {
		if got := readFile(t, filepath.Join(assets, bin)); got != "installed "+bin {
			t.Errorf("%s was replaced: %q", bin, got)
		}
	}
	if requests.Load() != 0 {
		t.Error("the script downloaded although the binaries are installed")
	}
}

// runEnvtestScript runs hack/envtest.sh with the source build replaced by
// a stand-in that writes "source <binary>" files, and returns its output.
func runEnvtestScript(t *testing.T, assets, downloadURL, checksums string, noDownload bool) string {
	t.Helper()
	// A guard against a hanging download, not a timing assertion: a refused
	// or failing download falls back at once.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	download := "true"
	if noDownload {
		download = "false"
	}
	cmd := exec.CommandContext(ctx, "bash", "envtest.sh")
	cmd.Env = append(os.Environ(),
		"ENVTEST_ASSETS_DIR="+assets,
		"ENVTEST_DOWNLOAD="+download,
		"ENVTEST_DOWNLOAD_URL="+downloadURL,
		"ENVTEST_CHECKSUMS="+checksums,
		`ENVTEST_SOURCE_BUILD_CMD=for b in etcd kube-apiserver kubectl; do printf 'source %s' "$b" >"$ENVTEST_ASSETS_DIR/$b" && chmod +x "$ENVTEST_ASSETS_DIR/$b"; done`,
		// The loopback server is reached directly, whatever proxy is set.
		"NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost",
	)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/envtest.sh: %v\n%s", err, out)
	}
	t.Logf("hack/envtest.sh took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	return string(out)
}

// envtestVersion is the Kubernetes version hack/envtest.sh pins.
func envtestVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^k8s_version=(v[0-9.]+)$`).FindStringSubmatch(readFile(t, "envtest.sh"))
	if m == nil {
		t.Fatal("no k8s_version= in hack/envtest.sh")
	}
	return m[1]
}

// releasePlatform is this machine's os-arch as the release files name it.
func releasePlatform(t *testing.T) string {
	t.Helper()
	switch runtime.GOOS + "/" + runtime.GOARCH {
	case "linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64":
		return runtime.GOOS + "-" + runtime.GOARCH
	}
	t.Skipf("setup-envtest publishes no release for %s/%s", runtime.GOOS, runtime.GOARCH)
	return ""
}

// releaseTarball builds a .tar.gz with files (name → content) as
// controller-tools packs its envtest releases: directories, then 0755 files.
func releaseTarball(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	dirs := map[string]bool{}
	for name, content := range files {
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(content))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// closedPortURL is an http:// URL on loopback where nothing listens.
func closedPortURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestEnvtestChecksumsPinTheScriptsVersion: every pin in
// hack/envtest-checksums.sha512 is a SHA-512 of a release file of the
// version the script installs, so bumping the version without re-pinning
// fails here instead of silently falling back to the source build.
func TestEnvtestChecksumsPinTheScriptsVersion(t *testing.T) {
	version := envtestVersion(t)
	line := regexp.MustCompile(`^([0-9a-f]{128})  envtest-` + regexp.QuoteMeta(version) + `-(linux|darwin)-(amd64|arm64)\.tar\.gz$`)
	pinned := map[string]bool{}
	for i, l := range strings.Split(readFile(t, "envtest-checksums.sha512"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("line %d is not `<sha512>  envtest-%s-<os>-<arch>.tar.gz`: %q", i+1, version, l)
			continue
		}
		pinned[m[2]+"-"+m[3]] = true
	}
	for _, platform := range []string{"linux-amd64", "linux-arm64", "darwin-amd64", "darwin-arm64"} {
		if !pinned[platform] {
			// Not an error: the script then builds from source, as it says.
			t.Logf("envtest-%s-%s.tar.gz is not pinned: hack/envtest.sh builds from source there", version, platform)
		}
	}
}
