// A Node.js client generated at run time from proto/ with @grpc/proto-loader, talking to the
// master over mTLS with @grpc/grpc-js: creates web clusters, lists them, and reports what it saw
// (including the status of a duplicate create) as one JSON line.
//
//   node client.js PROTO_DIR MASTER_ADDR PKI_DIR NAME...
'use strict';
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoDir, master, pkiDir, ...names] = process.argv.slice(2);
const definition = loader.loadSync(
  ['switchyard/master/v1/web_cluster.proto', 'switchyard/master/v1/node.proto'],
  { includeDirs: [protoDir], longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).switchyard.master.v1;
const read = (f) => fs.readFileSync(path.join(pkiDir, f));
const credentials = grpc.credentials.createSsl(read('ca.pem'), read('admin.key'), read('admin.pem'));
const options = { 'grpc.ssl_target_name_override': 'localhost' };
const web = new v1.WebClusterService(master, credentials, options);
const nodes = new v1.NodeService(master, credentials, options);

const call = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 10000 }, (err, response) =>
      err ? reject(err) : resolve(response)));

(async () => {
  const created = [];
  for (const [i, name] of names.entries()) {
    const r = await call(web, 'CreateWebCluster', { webcluster: { name, tcpPort: 8080 + i } });
    created.push({ oid: r.webcluster.oid, name: r.webcluster.name, status: r.webcluster.status });
  }
  const listed = await call(web, 'ListWebClusters', { returnNames: true });
  let duplicate = null;
  try {
    await call(web, 'CreateWebCluster', { webcluster: { name: names[0], tcpPort: 9999 } });
  } catch (err) {
    duplicate = { code: err.code, details: err.details };
  }
  const nodeList = await call(nodes, 'ListNodes', { returnNames: true });
  console.log(JSON.stringify({ created, listed: listed.items, duplicate, nodes: nodeList.items }));
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
