//! Services as the datapath reads them: Kubernetes Service + EndpointSlice YAML.
