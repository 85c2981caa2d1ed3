package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const defaultCapacity = 1 << 30

type volume struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Capacity int64  `json:"capacity"`
}

type snapshot struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	SourceVol string    `json:"sourceVolumeId"`
	Size      int64     `json:"size"`
	Created   time.Time `json:"created"`
}

type state struct {
	Volumes   map[string]*volume   `json:"volumes"`
	Snapshots map[string]*snapshot `json:"snapshots"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, nodeID, dir string
	mu                sync.Mutex
	st                state
}

func newDriver(name, nodeID, dir string) (*driver, error) {
	d := &driver{name: name, nodeID: nodeID, dir: dir,
		st: state{Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}}}
	for _, sub := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o750); err != nil {
			return nil, fmt.Errorf("creating %s: %w", sub, err)
		}
	}
	raw, err := os.ReadFile(d.statePath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading state: %w", err)
	default:
		if err := json.Unmarshal(raw, &d.st); err != nil {
			return nil, fmt.Errorf("parsing %s: %w", d.statePath(), err)
		}
	}
	return d, nil
}

func (d *driver) register(s *grpc.Server) {
	csi.RegisterIdentityServer(s, d)
	csi.RegisterControllerServer(s, d)
	csi.RegisterNodeServer(s, d)
}

func (d *driver) statePath() string         { return filepath.Join(d.dir, "state.json") }
func (d *driver) volPath(id string) string  { return filepath.Join(d.dir, "volumes", id) }
func (d *driver) snapPath(id string) string { return filepath.Join(d.dir, "snapshots", id) }
func idFor(prefix, name string) string {
	h := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(h[:8])
}
func internal(err error, what string) error {
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}
func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}
func notFound(format string, a ...any) error { return status.Errorf(codes.NotFound, format, a...) }

// save writes the state atomically; the caller holds d.mu.
func (d *driver) save() error {
	raw, err := json.MarshalIndent(d.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.statePath() + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, d.statePath())
}

// copyTree copies the contents of src into dst (which must exist), keeping modes.
func copyTree(src, dst string) error {
	out, err := exec.Command("cp", "-a", src+"/.", dst+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// --- Identity ---------------------------------------------------------------

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: "kube-backup-test"}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// --- Controller -------------------------------------------------------------

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func checkCaps(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return invalid("volume capabilities are required")
	}
	for _, c := range caps {
		if c.GetBlock() != nil {
			return invalid("block volumes are not supported, only filesystem")
		}
	}
	return nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	capacity := req.GetCapacityRange().GetRequiredBytes()
	if capacity == 0 {
		capacity = defaultCapacity
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor("vol-", req.GetName())
	src := req.GetVolumeContentSource()
	if v, ok := d.st.Volumes[id]; ok {
		if v.Capacity < capacity {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with a smaller capacity", req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: v.Capacity, ContentSource: src}}, nil
	}
	from := ""
	switch {
	case src.GetSnapshot() != nil:
		s, ok := d.st.Snapshots[src.GetSnapshot().GetSnapshotId()]
		if !ok {
			return nil, notFound("snapshot %s not found", src.GetSnapshot().GetSnapshotId())
		}
		if s.Size > capacity {
			return nil, status.Errorf(codes.OutOfRange, "snapshot %s is %d bytes, more than the requested %d", s.ID, s.Size, capacity)
		}
		from = d.snapPath(s.ID)
	case src.GetVolume() != nil:
		v, ok := d.st.Volumes[src.GetVolume().GetVolumeId()]
		if !ok {
			return nil, notFound("volume %s not found", src.GetVolume().GetVolumeId())
		}
		from = d.volPath(v.ID)
	}
	path := d.volPath(id)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, internal(err, "creating the volume directory")
	}
	// Pods of any UID may write (like a fresh hostPath directory under 0777).
	if err := os.Chmod(path, 0o777); err != nil {
		return nil, internal(err, "chmod of the volume directory")
	}
	if from != "" {
		if err := copyTree(from, path); err != nil {
			_ = os.RemoveAll(path)
			return nil, internal(err, "populating the volume")
		}
	}
	d.st.Volumes[id] = &volume{ID: id, Name: req.GetName(), Capacity: capacity}
	if err := d.save(); err != nil {
		return nil, internal(err, "saving state")
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: capacity, ContentSource: src}}, nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.RemoveAll(d.volPath(req.GetVolumeId())); err != nil {
		return nil, internal(err, "removing the volume directory")
	}
	delete(d.st.Volumes, req.GetVolumeId())
	if err := d.save(); err != nil {
		return nil, internal(err, "saving state")
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	d.mu.Lock()
	_, ok := d.st.Volumes[req.GetVolumeId()]
	d.mu.Unlock()
	if !ok {
		return nil, notFound("volume %s not found", req.GetVolumeId())
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func (s *snapshot) csi() *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.SourceVol, SizeBytes: s.Size,
		CreationTime: timestamppb.New(s.Created), ReadyToUse: true}
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, invalid("name and source volume id are required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor("snap-", req.GetName())
	if s, ok := d.st.Snapshots[id]; ok {
		if s.SourceVol != req.GetSourceVolumeId() {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", req.GetName())
		}
		return &csi.CreateSnapshotResponse{Snapshot: s.csi()}, nil
	}
	v, ok := d.st.Volumes[req.GetSourceVolumeId()]
	if !ok {
		return nil, notFound("volume %s not found", req.GetSourceVolumeId())
	}
	path := d.snapPath(id)
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, internal(err, "creating the snapshot directory")
	}
	if err := copyTree(d.volPath(v.ID), path); err != nil {
		_ = os.RemoveAll(path)
		return nil, internal(err, "copying the volume")
	}
	s := &snapshot{ID: id, Name: req.GetName(), SourceVol: v.ID, Size: v.Capacity, Created: time.Now().UTC()}
	d.st.Snapshots[id] = s
	if err := d.save(); err != nil {
		return nil, internal(err, "saving state")
	}
	return &csi.CreateSnapshotResponse{Snapshot: s.csi()}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot id is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.RemoveAll(d.snapPath(req.GetSnapshotId())); err != nil {
		return nil, internal(err, "removing the snapshot")
	}
	delete(d.st.Snapshots, req.GetSnapshotId())
	if err := d.save(); err != nil {
		return nil, internal(err, "saving state")
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*csi.ListSnapshotsResponse_Entry
	for _, s := range d.st.Snapshots {
		if req.GetSnapshotId() != "" && s.ID != req.GetSnapshotId() {
			continue
		}
		if req.GetSourceVolumeId() != "" && s.SourceVol != req.GetSourceVolumeId() {
			continue
		}
		out = append(out, &csi.ListSnapshotsResponse_Entry{Snapshot: s.csi()})
	}
	return &csi.ListSnapshotsResponse{Entries: out}, nil
}

// --- Node -------------------------------------------------------------------

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// mounted reports whether path is a mount point (listed in /proc/self/mountinfo).
func mounted(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[4] == path {
			return true, nil
		}
	}
	return false, sc.Err()
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" {
		return nil, invalid("volume id and target path are required")
	}
	if req.GetVolumeCapability().GetBlock() != nil {
		return nil, invalid("block volumes are not supported")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.st.Volumes[req.GetVolumeId()]; !ok {
		return nil, notFound("volume %s not found", req.GetVolumeId())
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, internal(err, "creating the target path")
	}
	if ok, err := mounted(target); err != nil {
		return nil, internal(err, "reading mountinfo")
	} else if ok {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := syscall.Mount(d.volPath(req.GetVolumeId()), target, "", syscall.MS_BIND, ""); err != nil {
		return nil, internal(err, "bind mount")
	}
	if req.GetReadonly() {
		if err := syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			_ = syscall.Unmount(target, 0)
			return nil, internal(err, "read-only remount")
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" {
		return nil, invalid("volume id and target path are required")
	}
	if ok, err := mounted(target); err != nil {
		return nil, internal(err, "reading mountinfo")
	} else if ok {
		if err := syscall.Unmount(target, 0); err != nil {
			return nil, internal(err, "unmount")
		}
	}
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return nil, internal(err, "removing the target path")
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
