"""Full life cycle of both cluster kinds and every SPEC 3.5 error case, through stubs generated
by grpcio-tools from proto/. Exits non-zero (with the failed assertion) on any deviation.

Usage: lifecycle.py STUBS_DIR PKI_DIR MASTER_ADDR FREE_PORT  (the started cluster listens on 127.0.0.1:FREE_PORT)
"""
import sys

stubs, pki, master, free_port = sys.argv[1:5]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402,F401  (may be absent; handled below)
from switchyard.agent.v1 import web_pb2  # noqa: E402
from switchyard.master.v1 import (  # noqa: E402
    common_pb2,
    node_pb2,
    node_pb2_grpc,
    router_cluster_pb2 as rc,
    router_cluster_pb2_grpc as rc_grpc,
    web_cluster_pb2 as wc,
    web_cluster_pb2_grpc as wc_grpc,
)


def read(f):
    with open(f"{pki}/{f}", "rb") as fh:
        return fh.read()


creds = grpc.ssl_channel_credentials(read("ca.pem"), read("admin.key"), read("admin.pem"))
channel = grpc.secure_channel(master, creds)
web = wc_grpc.WebClusterServiceStub(channel)
router = rc_grpc.RouterClusterServiceStub(channel)
nodes = node_pb2_grpc.NodeServiceStub(channel)


def reason(err):
    """The ErrorInfo reason of an RpcError (from the grpc-status-details-bin trailer)."""
    from google.rpc import status_pb2
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason
    return None


def expect(code, why, fn, *args):
    try:
        fn(*args, timeout=10)
    except grpc.RpcError as e:
        assert e.code() == code, f"{fn}: expected {code}, got {e.code()}: {e.details()}"
        assert reason(e) == why, f"{fn}: expected reason {why}, got {reason(e)}"
        return e
    raise AssertionError(f"{fn} succeeded; expected {code}/{why}")


node_oid = nodes.GetNodeByName(node_pb2.GetNodeByNameRequest(authid="node1"), timeout=10).node.oid

# --- web cluster ---
c = web.CreateWebCluster(wc.CreateWebClusterRequest(webcluster=wc.WebCluster(name="pyweb", tcp_port=int(free_port), tcp_interface="127.0.0.1")), timeout=10).webcluster
assert c.status == common_pb2.CLUSTER_STATUS_STOPPED and c.tcp_shared
assert web.GetWebCluster(wc.GetWebClusterRequest(webcluster_oid=c.oid), timeout=10).webcluster.name == "pyweb"
assert web.GetWebClusterByName(wc.GetWebClusterByNameRequest(webcluster_name="pyweb"), timeout=10).webcluster.oid == c.oid
assert c.oid in web.ListWebClusters(wc.ListWebClustersRequest(), timeout=10).items
assert "pyweb" in web.ListWebClusters(wc.ListWebClustersRequest(return_names=True), timeout=10).items
m = web.AddWebClusterNode(wc.AddWebClusterNodeRequest(webcluster_oid=c.oid, node_oid=node_oid, config=wc.WebClusterNodeConfig(parallel=2)), timeout=10).node
assert m.parallel == 2 and m.node_authid == "node1"
assert web.GetWebClusterNode(wc.GetWebClusterNodeRequest(webcluster_oid=c.oid, node_oid="node1"), timeout=10).node.parallel == 2
assert list(web.ListWebClusterNodes(wc.ListWebClusterNodesRequest(webcluster_oid=c.oid, return_names=True), timeout=10).items) == ["node1"]
value = struct_pb2.Value()
value.list_value.values.add().number_value = 1
svc = web.AddWebClusterService(wc.AddWebClusterServiceRequest(webcluster_oid=c.oid, webservice=wc.WebService(path="/settings", json=web_pb2.JsonService(value=value))), timeout=10).webservice
st = web.AddWebClusterService(wc.AddWebClusterServiceRequest(webcluster_oid=c.oid, webservice=wc.WebService(path="/", static=web_pb2.StaticService(directory="/srv/www"))), timeout=10).webservice
assert web.GetWebClusterService(wc.GetWebClusterServiceRequest(webcluster_oid=c.oid, webservice_oid=svc.oid), timeout=10).webservice.json.value.list_value.values[0].number_value == 1
assert web.GetWebClusterServiceByPath(wc.GetWebClusterServiceByPathRequest(webcluster_oid=c.oid, path="/"), timeout=10).webservice.oid == st.oid
assert dict(web.ListWebClusterServices(wc.ListWebClusterServicesRequest(webcluster_oid=c.oid), timeout=10).services) == {"/": st.oid, "/settings": svc.oid}
assert dict(web.ListWebClusterServices(wc.ListWebClusterServicesRequest(webcluster_oid=c.oid, prefix="/set"), timeout=10).services) == {"/settings": svc.oid}

# errors of the web cluster API
expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", web.CreateWebCluster, wc.CreateWebClusterRequest(webcluster=wc.WebCluster(name="Bad Name", tcp_port=80)))
expect(grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", web.CreateWebCluster, wc.CreateWebClusterRequest(webcluster=wc.WebCluster(name="pyweb", tcp_port=80)))
expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", web.GetWebCluster, wc.GetWebClusterRequest(webcluster_oid="not-a-uuid"))
expect(grpc.StatusCode.NOT_FOUND, "NO_SUCH_OBJECT", web.GetWebCluster, wc.GetWebClusterRequest(webcluster_oid="00000000-0000-4000-8000-000000000000"))
expect(grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", web.AddWebClusterService, wc.AddWebClusterServiceRequest(webcluster_oid=c.oid, webservice=wc.WebService(path="/", nodeinfo=web_pb2.NodeInfoService())))
e = expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CONFIGURATION", web.AddWebClusterService, wc.AddWebClusterServiceRequest(webcluster_oid=c.oid, webservice=wc.WebService(path="/r", redirect=web_pb2.RedirectService(url="not a url"))))
assert "redirect.url" in e.details(), e.details()
expect(grpc.StatusCode.FAILED_PRECONDITION, "CANNOT_STOP", web.StopWebCluster, wc.StopWebClusterRequest(webcluster_oid=c.oid))
ch = web.StartWebCluster(wc.StartWebClusterRequest(webcluster_oid=c.oid), timeout=10).change
assert ch.status == common_pb2.CLUSTER_STATUS_STARTING and ch.who.principal == "spiffe://switchyard/admin/admin"
expect(grpc.StatusCode.FAILED_PRECONDITION, "CANNOT_START", web.StartWebCluster, wc.StartWebClusterRequest(webcluster_oid=c.oid))
expect(grpc.StatusCode.FAILED_PRECONDITION, "NOT_STOPPED", web.DeleteWebCluster, wc.DeleteWebClusterRequest(webcluster_oid=c.oid))
assert web.StopWebCluster(wc.StopWebClusterRequest(webcluster_oid=c.oid), timeout=10).change.status == common_pb2.CLUSTER_STATUS_STOPPING

# delete (in STOPPED) removes the cluster with its memberships and services, atomically
c2 = web.CreateWebCluster(wc.CreateWebClusterRequest(webcluster=wc.WebCluster(name="pyweb2", tcp_port=8081)), timeout=10).webcluster
web.AddWebClusterNode(wc.AddWebClusterNodeRequest(webcluster_oid=c2.oid, node_oid="node1"), timeout=10)
s2 = web.AddWebClusterService(wc.AddWebClusterServiceRequest(webcluster_oid=c2.oid, webservice=wc.WebService(path="info", nodeinfo=web_pb2.NodeInfoService())), timeout=10).webservice
assert s2.path == "/info"
web.RemoveWebClusterNode(wc.RemoveWebClusterNodeRequest(webcluster_oid=c2.oid, node_oid="node1"), timeout=10)
expect(grpc.StatusCode.NOT_FOUND, "NO_SUCH_OBJECT", web.GetWebClusterNode, wc.GetWebClusterNodeRequest(webcluster_oid=c2.oid, node_oid="node1"))
web.AddWebClusterNode(wc.AddWebClusterNodeRequest(webcluster_oid=c2.oid, node_oid="node1"), timeout=10)
web.RemoveWebClusterService(wc.RemoveWebClusterServiceRequest(webcluster_oid=c2.oid, webservice_oid=s2.oid), timeout=10)
web.AddWebClusterService(wc.AddWebClusterServiceRequest(webcluster_oid=c2.oid, webservice=wc.WebService(path="info", nodeinfo=web_pb2.NodeInfoService())), timeout=10)
assert web.DeleteWebCluster(wc.DeleteWebClusterRequest(webcluster_oid=c2.oid), timeout=10).webcluster.name == "pyweb2"
expect(grpc.StatusCode.NOT_FOUND, "NO_SUCH_OBJECT", web.GetWebCluster, wc.GetWebClusterRequest(webcluster_oid=c2.oid))
c3 = web.CreateWebCluster(wc.CreateWebClusterRequest(webcluster=wc.WebCluster(name="pyweb2", tcp_port=8081)), timeout=10).webcluster
assert dict(web.ListWebClusterServices(wc.ListWebClusterServicesRequest(webcluster_oid=c3.oid), timeout=10).services) == {}
assert list(web.ListWebClusterNodes(wc.ListWebClusterNodesRequest(webcluster_oid=c3.oid), timeout=10).items) == []

# --- router cluster ---
r = router.CreateRouterCluster(rc.CreateRouterClusterRequest(routercluster=rc.RouterCluster(name="pyrouter")), timeout=10).routercluster
assert router.GetRouterClusterByName(rc.GetRouterClusterByNameRequest(routercluster_name="pyrouter"), timeout=10).routercluster.oid == r.oid
assert "pyrouter" in router.ListRouterClusters(rc.ListRouterClustersRequest(return_names=True), timeout=10).items
n = router.AddRouterClusterNode(rc.AddRouterClusterNodeRequest(routercluster_oid=r.oid, node_oid=node_oid, config=rc.RouterClusterNodeConfig(softlimit=1, hardlimit=2)), timeout=10).node
assert n.hardlimit == 2
assert router.GetRouterClusterNode(rc.GetRouterClusterNodeRequest(routercluster_oid=r.oid, node_oid=node_oid), timeout=10).node.softlimit == 1
assert list(router.ListRouterClusterNodes(rc.ListRouterClusterNodesRequest(routercluster_oid=r.oid), timeout=10).items) == [node_oid]
g = router.AddRouterClusterWorkerGroup(rc.AddRouterClusterWorkerGroupRequest(routercluster_oid=r.oid, workergroup=rc.RouterWorkerGroup(name="mygroup1", scale=4)), timeout=10).workergroup
assert g.scale == 4 and list(g.realms) == ["realm1"] and g.port_range.start == 10000
d = router.AddRouterClusterWorkerGroup(rc.AddRouterClusterWorkerGroupRequest(routercluster_oid=r.oid, workergroup=rc.RouterWorkerGroup()), timeout=10).workergroup
assert d.name == "cwg_" + d.oid[:8] and d.scale == 1, d
assert router.GetRouterClusterWorkerGroupByName(rc.GetRouterClusterWorkerGroupByNameRequest(routercluster_name="pyrouter", workergroup_name="mygroup1"), timeout=10).workergroup.oid == g.oid
assert sorted(router.ListRouterClusterWorkerGroups(rc.ListRouterClusterWorkerGroupsRequest(routercluster_oid=r.oid, return_names=True), timeout=10).items) == sorted(["mygroup1", d.name])
expect(grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS", router.AddRouterClusterWorkerGroup, rc.AddRouterClusterWorkerGroupRequest(routercluster_oid=r.oid, workergroup=rc.RouterWorkerGroup(name="mygroup1")))
expect(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", router.AddRouterClusterWorkerGroup, rc.AddRouterClusterWorkerGroupRequest(routercluster_oid=r.oid, workergroup=rc.RouterWorkerGroup(name="big", scale=129)))
router.RemoveRouterClusterWorkerGroup(rc.RemoveRouterClusterWorkerGroupRequest(routercluster_oid=r.oid, workergroup_oid=d.oid), timeout=10)
router.StartRouterCluster(rc.StartRouterClusterRequest(routercluster_oid=r.oid), timeout=10)
expect(grpc.StatusCode.FAILED_PRECONDITION, "NOT_STOPPED", router.DeleteRouterCluster, rc.DeleteRouterClusterRequest(routercluster_oid=r.oid))
router.StopRouterCluster(rc.StopRouterClusterRequest(routercluster_oid=r.oid), timeout=10)
router.RemoveRouterClusterNode(rc.RemoveRouterClusterNodeRequest(routercluster_oid=r.oid, node_oid=node_oid), timeout=10)
r2 = router.CreateRouterCluster(rc.CreateRouterClusterRequest(routercluster=rc.RouterCluster(name="pyrouter2")), timeout=10).routercluster
router.AddRouterClusterNode(rc.AddRouterClusterNodeRequest(routercluster_oid=r2.oid, node_oid="node1"), timeout=10)
router.AddRouterClusterWorkerGroup(rc.AddRouterClusterWorkerGroupRequest(routercluster_oid=r2.oid, workergroup=rc.RouterWorkerGroup(name="grp")), timeout=10)
router.DeleteRouterCluster(rc.DeleteRouterClusterRequest(routercluster_oid=r2.oid), timeout=10)
expect(grpc.StatusCode.NOT_FOUND, "NO_SUCH_OBJECT", router.GetRouterClusterWorkerGroupByName, rc.GetRouterClusterWorkerGroupByNameRequest(routercluster_name="pyrouter2", workergroup_name="grp"))
expect(grpc.StatusCode.FAILED_PRECONDITION, "IN_USE", nodes.RemoveNode, node_pb2.RemoveNodeRequest(node_oid=node_oid))
expect(grpc.StatusCode.NOT_FOUND, "NO_SUCH_OBJECT", router.GetRouterClusterNode, rc.GetRouterClusterNodeRequest(routercluster_oid=r.oid, node_oid=node_oid))
print("ok")
