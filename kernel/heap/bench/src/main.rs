fn main(){ println!("{}", kheap::source::PAGE_SIZE); }
