package main

import (
	"context"
	"log"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// registrar answers the kubelet's plugin watcher: it names the CSI driver and
// the socket the kubelet should call for the Node service.
type registrar struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string
}

func registerRegistrar(s *grpc.Server, driverName, csiAddress string) {
	registerapi.RegisterRegistrationServer(s, &registrar{driverName: driverName, endpoint: csiAddress})
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("registrar: kubelet asked for plugin info; answering %s at %s", r.driverName, r.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.driverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		log.Printf("registrar: the kubelet registered %s", r.driverName)
	} else {
		log.Printf("registrar: the kubelet failed to register %s: %s", r.driverName, st.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
