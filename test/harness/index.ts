export * from './ports';
export * from './apache';
export * from './lighttpd';
export * from './nginx';
export * from './http';
export { pidAlive, findProcesses, killAllServers, makeReadableTempDir, isRoot, type FileSpec, type StopResult } from './proc';
