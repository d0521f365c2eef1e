// A TF Serving client in Node.js, as a non-Python caller would write it: it loads the served
// API from protos/ with @grpc/proto-loader and calls Predict and GetModelStatus.
//
// Usage: node client.js <host:port> <protos dir> [model name]
// Prints one JSON object: {"predict": {...}, "status": {...}}.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [target, protosDir, modelName = 'default'] = process.argv.slice(2);
if (!target || !protosDir) {
  console.error('usage: node client.js <host:port> <protos dir> [model name]');
  process.exit(2);
}

const definition = protoLoader.loadSync(
  ['tensorflow_serving/apis/prediction_service.proto',
   'tensorflow_serving/apis/model_service.proto'],
  {includeDirs: [path.resolve(protosDir)], keepCase: true, longs: String, enums: String,
   defaults: true, oneofs: true});
const serving = grpc.loadPackageDefinition(definition).tensorflow.serving;
const deadline = () => Date.now() + 20000;

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, {deadline: deadline()}, (error, response) =>
      error ? reject(new Error(`${method}: ${error.code} ${error.details}`)) : resolve(response));
  });
}

async function main() {
  const credentials = grpc.credentials.createInsecure();
  const prediction = new serving.PredictionService(target, credentials);
  const models = new serving.ModelService(target, credentials);
  try {
    const predict = await call(prediction, 'Predict', {
      model_spec: {name: modelName, signature_name: 'serving_default'},
      inputs: {x: {dtype: 'DT_FLOAT', tensor_shape: {dim: [{size: 1}]}, float_val: [2.0]}},
    });
    const status = await call(models, 'GetModelStatus', {model_spec: {name: modelName}});
    const y = predict.outputs.y;
    console.log(JSON.stringify({
      predict: {model_spec: predict.model_spec, y: {dtype: y.dtype, float_val: y.float_val,
                                                   dim: y.tensor_shape.dim.map((d) => d.size)}},
      status: status.model_version_status.map((s) => ({
        version: s.version, state: s.state, error_code: s.status && s.status.error_code})),
    }));
  } finally {
    prediction.close();
    models.close();
  }
}

main().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
