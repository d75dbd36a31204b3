// Command pod-targets serves Prometheus's HTTP service discovery with the pods the API server lists.
//
// Debian's Prometheus is built without Kubernetes service discovery, so the kind cluster's Prometheus asks this
// program, beside it in its pod, for its targets instead (http_sd_configs). Each request lists the pods that match
// -selector in every namespace, with the pod's service account, and answers one target group per port named -port
// of each running pod: its address, and the labels `namespace` and `pod` that prometheus-adapter maps to those
// resources. A failed list answers 502, and Prometheus keeps the targets it had.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Where the kubelet mounts a pod's service account token and the cluster's CA.
const accountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type pod struct {
	Metadata struct {
		Name              string  `json:"name"`
		Namespace         string  `json:"namespace"`
		DeletionTimestamp *string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		Containers []struct {
			Ports []struct {
				Name          string `json:"name"`
				ContainerPort int    `json:"containerPort"`
			} `json:"ports"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
		PodIP string `json:"podIP"`
	} `json:"status"`
}

// targetGroup is one entry of the HTTP service discovery answer.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

type apiServer struct {
	base   string
	client *http.Client
}

func inCluster() (*apiServer, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not in a pod")
	}
	ca, err := os.ReadFile(accountDir + "/ca.crt")
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, errors.New("no certificate in " + accountDir + "/ca.crt")
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	return &apiServer{"https://" + net.JoinHostPort(host, port), &http.Client{Transport: transport, Timeout: 10 * time.Second}}, nil
}

// pods lists the pods matching selector in every namespace. The token is read on each call: the kubelet renews it.
func (a *apiServer) pods(ctx context.Context, selector string) ([]pod, error) {
	token, err := os.ReadFile(accountDir + "/token")
	if err != nil {
		return nil, err
	}
	query := url.Values{"labelSelector": {selector}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/api/v1/pods?"+query, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("listing pods: %s", resp.Status)
	}
	var list struct {
		Items []pod `json:"items"`
	}
	err = json.NewDecoder(resp.Body).Decode(&list)
	return list.Items, err
}

// targets are the running pods' ports named portName; a pod on its way out is left out.
func targets(pods []pod, portName string) []targetGroup {
	groups := []targetGroup{}
	for _, p := range pods {
		if p.Status.Phase != "Running" || p.Status.PodIP == "" || p.Metadata.DeletionTimestamp != nil {
			continue
		}
		for _, container := range p.Spec.Containers {
			for _, port := range container.Ports {
				if port.Name != portName {
					continue
				}
				groups = append(groups, targetGroup{
					Targets: []string{net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port.ContainerPort))},
					Labels:  map[string]string{"namespace": p.Metadata.Namespace, "pod": p.Metadata.Name},
				})
			}
		}
	}
	return groups
}

func main() {
	listen := flag.String("listen", "127.0.0.1:9091", "address to serve /targets on")
	selector := flag.String("selector", "", "label selector of the pods to scrape")
	portName := flag.String("port", "http", "name of the container port serving metrics")
	flag.Parse()
	api, err := inCluster()
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/targets", func(w http.ResponseWriter, r *http.Request) {
		found, err := api.pods(r.Context(), *selector)
		if err != nil {
			log.Print(err)
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(targets(found, *portName)); err != nil {
			log.Print(err)
		}
	})
	log.Printf("serving the targets of pods %q (port %q) on %s", *selector, *portName, *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}
