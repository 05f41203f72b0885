package ociimage

import "path/filepath"

// Repository is where this project's images are published.
const Repository = "ghcr.io/svid-csi/"

// DriverSpec is the svid-csi-driver image with the binary in binDir: what
// Dockerfile.driver's final stage holds (the test in this package compares
// them). Root: the driver mounts tmpfs volumes.
func DriverSpec(binDir, tag string) Spec {
	return binarySpec(binDir, "svid-csi-driver", tag, "0:0")
}

// ApproverSpec is the svid-csi-approver image, as Dockerfile.approver's final
// stage: uid 65532, the Deployment's runAsUser.
func ApproverSpec(binDir, tag string) Spec {
	return binarySpec(binDir, "svid-csi-approver", tag, "65532:65532")
}

func binarySpec(binDir, name, tag, user string) Spec {
	return Spec{
		Ref:        Repository + name + ":" + tag,
		Entrypoint: []string{"/" + name},
		User:       user,
		Files:      []File{{Path: "/" + name, Mode: 0o755, Source: filepath.Join(binDir, name)}},
	}
}
