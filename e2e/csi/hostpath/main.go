// kb-csi-hostpath: a small CSI driver for the kube-backup local test cluster.
//
// The Go module proxy reachable from these machines does not serve
// github.com/kubernetes-csi/csi-driver-host-path nor node-driver-registrar, so
// this program plays both parts for tests (it is not meant for production):
//
//	kb-csi-hostpath driver    -endpoint unix:///.../csi.sock -data-dir DIR -node-id NODE
//	kb-csi-hostpath registrar -csi-address /.../csi.sock -registration-socket /.../plugins_registry/X-reg.sock
//
// driver: Identity, Controller (create/delete volume, from snapshot or clone;
// create/delete/list snapshots) and Node (bind-mount publish) services. A
// volume is a directory DIR/volumes/<id>; a snapshot is a copy of it in
// DIR/snapshots/<id>; state.json survives restarts.
// registrar: the kubelet plugin-registration service that tells the kubelet
// where the driver's socket is (what node-driver-registrar does).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kb-csi-hostpath driver|registrar [flags]")
		os.Exit(2)
	}
	mode, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	driverName := fs.String("driver-name", "hostpath.csi.k8s.io", "CSI driver name")
	endpoint := fs.String("endpoint", "", "driver: unix:// endpoint to serve CSI on")
	dataDir := fs.String("data-dir", "", "driver: directory holding volumes, snapshots and state")
	nodeID := fs.String("node-id", "", "driver: the node ID reported by NodeGetInfo (the Node name)")
	csiAddress := fs.String("csi-address", "", "registrar: path of the driver's CSI socket, as the kubelet sees it")
	regSocket := fs.String("registration-socket", "", "registrar: socket to serve in the kubelet's plugins_registry dir")
	_ = fs.Parse(args)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	var (
		server *grpc.Server
		socket string
	)
	switch mode {
	case "driver":
		if *endpoint == "" || *dataDir == "" || *nodeID == "" {
			log.Fatal("driver needs -endpoint, -data-dir and -node-id")
		}
		d, err := newDriver(*driverName, *nodeID, *dataDir)
		if err != nil {
			log.Fatalf("driver: %v", err)
		}
		socket = strings.TrimPrefix(*endpoint, "unix://")
		server = grpc.NewServer(grpc.UnaryInterceptor(logCalls))
		d.register(server)
	case "registrar":
		if *csiAddress == "" || *regSocket == "" {
			log.Fatal("registrar needs -csi-address and -registration-socket")
		}
		socket = *regSocket
		server = grpc.NewServer()
		registerRegistrar(server, *driverName, *csiAddress)
	default:
		log.Fatalf("unknown mode %q (driver|registrar)", mode)
	}

	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		log.Fatalf("creating the socket directory: %v", err)
	}
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		log.Fatalf("removing a stale socket %s: %v", socket, err)
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", socket, err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		log.Printf("%s: stopping on %v", mode, s)
		server.Stop()
	}()
	log.Printf("%s: serving on %s", mode, socket)
	if err := server.Serve(lis); err != nil {
		log.Printf("%s: serve: %v", mode, err)
	}
	_ = os.Remove(socket)
}

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	switch {
	case err != nil:
		log.Printf("%s failed: %v", method, err)
	case method != "Probe" && method != "GetPluginInfo" && method != "GetPluginCapabilities" &&
		method != "ControllerGetCapabilities" && method != "NodeGetCapabilities":
		log.Printf("%s ok", method)
	}
	return resp, err
}
