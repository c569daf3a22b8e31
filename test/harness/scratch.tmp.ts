import { startApache } from './apache';
(async () => {
  const a = await startApache({ config: 'ScriptSock /nonexistent-dir/x.sock\n' , keepRoot: true});
  await new Promise(r => setTimeout(r, 500));
  console.log(a.errorLog(), a.processes());
  a.graceful().then(()=>console.log(a.errorLog())).catch(e=>console.log('gerr', e.message)).finally(()=>a.stop());
})();
