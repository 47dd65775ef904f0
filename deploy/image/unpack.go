package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func runUnpack(args []string) error {
	fs := flag.NewFlagSet("unpack", flag.ContinueOnError)
	archive := fs.String("archive", "", "the OCI image archive")
	rootfs := fs.String("rootfs", "", "the folder to unpack the image's filesystem into (must not exist)")
	config := fs.String("config", "", "write the image's config file (JSON) here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *archive == "" || *rootfs == "" || *config == "" {
		return errors.New("--archive, --rootfs and --config are required")
	}
	dir, err := os.MkdirTemp("", "switchyard-image-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := untar(*archive, dir, false); err != nil {
		return fmt.Errorf("read %s: %w", *archive, err)
	}
	img, err := onlyImage(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", *archive, err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := os.WriteFile(*config, cfg, 0o644); err != nil {
		return err
	}
	if err := os.Mkdir(*rootfs, 0o755); err != nil {
		return err
	}
	flat := mutate.Extract(img)
	defer flat.Close()
	return untarFrom(flat, *rootfs, true)
}

// onlyImage is the one image of the OCI layout in dir.
func onlyImage(dir string) (v1.Image, error) {
	index, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	manifest, err := index.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(manifest.Manifests) != 1 {
		return nil, fmt.Errorf("the layout holds %d manifests, want 1", len(manifest.Manifests))
	}
	return index.Image(manifest.Manifests[0].Digest)
}

func untar(path, dir string, owners bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return untarFrom(f, dir, owners)
}

// untarFrom writes the regular files and folders of a tar stream under dir, keeping modes and,
// with owners (and the rights to), owners; a name that would leave dir is refused.
func untarFrom(r io.Reader, dir string, owners bool) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if name == "." || filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("unsafe path %q", h.Name)
		}
		target := filepath.Join(dir, name)
		mode := os.FileMode(h.Mode).Perm()
		if h.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: entry type %q is not expected in this image", h.Name, h.Typeflag)
		}
		if err := os.Chmod(target, mode); err != nil {
			return err
		}
		if owners && os.Geteuid() == 0 {
			if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
				return err
			}
		}
	}
}
